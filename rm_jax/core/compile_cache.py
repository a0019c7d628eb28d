"""The persistent XLA compilation cache for the scoring commands (``score``, ``eval``, ``serve``, ``weights``).

A scoring command compiles one program per batch shape, and on a CPU that compile is a few seconds of a
run that may score for only a few more: with the cache, a second run of the same command on the same
shapes loads the executable instead (docs/performance.md, "Scoring on a CPU"). jax keys each entry by the
program, the jax / jaxlib versions, the backend and the flags, so a changed model or checkout compiles anew.

Where: ``$RM_JAX_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/rm_jax/xla`` (``~/.cache/rm_jax/xla``).
``RM_JAX_COMPILATION_CACHE=off`` turns it off; a ``JAX_COMPILATION_CACHE_DIR`` set by the user is left to
jax and wins.
"""

from __future__ import annotations

import os
from typing import Optional

OFF = ("", "0", "off", "false", "no", "none")


def cache_dir(environ: Optional[dict] = None) -> Optional[str]:
    """The directory the scoring commands cache compiled programs in, or None (off, or left to jax)."""
    env = os.environ if environ is None else environ
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return None  # jax reads it itself
    if "RM_JAX_COMPILATION_CACHE" in env:
        value = env["RM_JAX_COMPILATION_CACHE"].strip()
        return None if value.lower() in OFF else os.path.expanduser(value)
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rm_jax", "xla")


def enable(environ: Optional[dict] = None) -> Optional[str]:
    """Point jax's persistent compilation cache at :func:`cache_dir` (before anything compiles); returns it.
    A directory that cannot be made leaves the cache off: it saves time, it is never needed."""
    path = cache_dir(environ)
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    return path
