"""A persistent XLA compilation cache for a test module's training runs, shared with the
subprocesses it starts (each train step is compiled once per module)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@contextlib.contextmanager
def persistent_compile_cache(path: str) -> Iterator[str]:
    """Caches every compile under `path` while inside; the previous settings after."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    old = {n: getattr(jax.config, n) for n in _OPTIONS}
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.reset_cache()
    try:
        yield path
    finally:
        for n, v in old.items():
            jax.config.update(n, v)
        cc.reset_cache()
