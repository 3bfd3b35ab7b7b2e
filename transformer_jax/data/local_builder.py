"""The base of the built-in tfds datasets: generated and prepared locally, never downloaded."""

from __future__ import annotations

import inspect

import tensorflow_datasets as tfds
from etils import epath


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder that lives inside this package.

    tfds finds a builder's files (checksums, metadata) through its module path, which for an
    installed package needs the `importlib_resources` backport; naming the subclass's own file
    avoids that dependency.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))
