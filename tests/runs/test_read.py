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
