"""The persistent compilation cache switch: a directory is created and set, and a bad one is named."""

import os

import jax
import pytest

import transformer_jax as tj


def test_enable_sets_the_directory_and_a_bad_one_is_named(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    try:
        path = tj.enable_compilation_cache(tmp_path / "xla")
        assert os.path.isdir(path) and jax.config.jax_compilation_cache_dir == path
        monkeypatch.setenv("TRANSFORMER_JAX_COMPILATION_CACHE", str(tmp_path / "env"))
        assert tj.enable_compilation_cache() == str(tmp_path / "env")
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(ValueError, match="compilation cache: cannot create directory .*file/sub"):
            tj.enable_compilation_cache(blocker / "sub")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
