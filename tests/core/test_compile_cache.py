"""Where the scoring commands' persistent compilation cache lives, and when it is off."""

import os

from rm_jax.core import compile_cache


def test_cache_dir_default_override_off_and_jax_own_variable():
    home = os.path.expanduser("~")
    assert compile_cache.cache_dir({}) == os.path.join(home, ".cache", "rm_jax", "xla")
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/rm_jax/xla"
    assert compile_cache.cache_dir({"RM_JAX_COMPILATION_CACHE": "/x", "XDG_CACHE_HOME": "/c"}) == "/x"
    for off in ("off", "0", "", "False"):
        assert compile_cache.cache_dir({"RM_JAX_COMPILATION_CACHE": off}) is None
    # a JAX_COMPILATION_CACHE_DIR the user set is jax's to read (and wins): rm_jax sets nothing
    assert compile_cache.cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j", "RM_JAX_COMPILATION_CACHE": "/x"}) is None


def test_enable_points_jax_at_the_directory(tmp_path, monkeypatch):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        path = compile_cache.enable({"RM_JAX_COMPILATION_CACHE": str(tmp_path / "xla")})
        assert path == str(tmp_path / "xla") and os.path.isdir(path)
        assert jax.config.jax_compilation_cache_dir == path
        assert compile_cache.enable({"RM_JAX_COMPILATION_CACHE": "off"}) is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
