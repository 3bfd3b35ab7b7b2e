"""JAX's persistent compilation cache, one call away: compiled programs are written to a directory
and reused by later processes, so a second run skips XLA compilation (tracing still runs).

The command line turns it on by default (`--compilation_cache`, '' turns it off); from Python call
`transformer_jax.enable_compilation_cache()` once, before the first jitted call.
"""

from __future__ import annotations

import os

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "transformer_jax", "xla")
ENV = "TRANSFORMER_JAX_COMPILATION_CACHE"  # overrides the default directory


def default_dir() -> str:
    return os.environ.get(ENV) or DEFAULT_DIR


def enable_compilation_cache(path: str | os.PathLike | None = None, *, min_compile_time_s: float = 0.5) -> str:
    """Cache every program that took at least `min_compile_time_s` to compile in `path` (default
    $TRANSFORMER_JAX_COMPILATION_CACHE, else ~/.cache/transformer_jax/xla); returns the directory."""
    import jax

    directory = os.fspath(path) if path is not None else default_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise ValueError(f"compilation cache: cannot create directory {directory!r} ({err.strerror}); "
                         "give a writable path, or '' to run without the cache") from err
    if not os.access(directory, os.W_OK):
        raise ValueError(f"compilation cache: directory {directory!r} is not writable; give a writable path, "
                         "or '' to run without the cache")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
