"""Reading a LoRA run folder: its base's hash is recorded once (lora_base.json, with the files' name, size and
mtime) and not recomputed by later reads while those are unchanged."""

from __future__ import annotations

import os

import jax

from rm_jax.models import lora
from rm_jax.models.sharding import make_mesh
from rm_jax.runs.read import load_run


def test_reading_a_lora_run_does_not_rehash_its_base(lora_rm_run, monkeypatch):
    hashed = []
    real = lora._hash_files
    monkeypatch.setattr(lora, "_hash_files", lambda path, files: hashed.append(path) or real(path, files))
    monkeypatch.setattr(lora, "_HASHES", {})  # as in a new process: nothing cached in memory
    mesh = make_mesh(devices=jax.devices()[:1])
    load_run(lora_rm_run["run"], mesh)
    load_run(lora_rm_run["run"], mesh)
    assert hashed == []  # lora_base.json's sha256 stands: the base's files are as recorded
    weights = os.path.join(lora_rm_run["base"], "model.safetensors")
    st = os.stat(weights)
    try:  # a base file touched since: hashed again (once per process), and still the same base
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        load_run(lora_rm_run["run"], mesh)
        load_run(lora_rm_run["run"], mesh)
        assert hashed == [os.path.abspath(lora_rm_run["base"])]
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_lora_runs_base_is_read_in_its_stored_dtype(lora_rm_run, monkeypatch):
    """fill_base reads the frozen base straight into the dtype the run stores it in (lora.base_dtype: cast tensor
    by tensor on the host), the heads kept float32: never whole in float32 on a device first. Values equal the
    float32 base cast afterwards."""
    import jax.numpy as jnp

    from rm_jax.models import hf_io

    mesh = make_mesh(devices=jax.devices()[:1])
    _, params, _, _ = load_run(lora_rm_run["run"], mesh)
    flat = lora._flat(params)
    trained = {p: v for p, v in flat.items() if "lora" in "/".join(p) or p[-1] == "head_kernel"}
    abstract = lora._unflat(
        {
            p: jax.ShapeDtypeStruct(v.shape, v.dtype if p in trained else jnp.bfloat16, sharding=v.sharding)
            for p, v in flat.items()
        }
    )
    seen = []
    real = hf_io.load_hf_reward_model
    monkeypatch.setattr(hf_io, "load_hf_reward_model", lambda *a, **k: seen.append(k) or real(*a, **k))
    out = lora._flat(lora.fill_base(lora_rm_run["run"], abstract, lora._unflat(dict(trained))))
    assert seen[0]["base_dtype"] == "bfloat16" and "head_kernel" not in seen[0]["float32_leaves"]
    for p, v in flat.items():
        if p not in trained:
            assert out[p].dtype == jnp.bfloat16
            assert (out[p] == v.astype(jnp.bfloat16)).all(), p
