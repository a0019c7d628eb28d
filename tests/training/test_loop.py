"""The training engine: sharded == unsharded, accumulation, learning, resume, bad input."""

import json
import os

import numpy as np
import pytest

from rm_jax.core.config import load_config
from rm_jax.core.errors import ConfigError
from rm_jax.engine.train_step import create_state, make_optimizer
from rm_jax.models import init_params
from rm_jax.models.sharding import make_mesh
from rm_jax.training.run import train
from rm_jax.training.setup import scratch_config
from tests.helpers import TINY, requires_devices  # noqa: E402

SMALL = [
    "model.arch.hidden_size=32",
    "model.arch.intermediate_size=64",
    "train.log_every=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "train.eval_every=0",
    "checkpoint.every_steps=0",
]


def cfg_for(tmp_path, *overrides):
    return load_config(TINY, [f"run_dir={tmp_path}", *SMALL, *overrides])


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(x) for x in f]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@requires_devices(8)
def test_sharded_run_matches_single_device(tmp_path):
    common = ["train.max_steps=20", "train.batch_rows=8"]
    one = train(cfg_for(tmp_path / "one", *common, "mesh.num_devices=1", "mesh.data=1"))
    sharded = train(cfg_for(tmp_path / "sharded", *common, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"))
    a, b = losses(one), losses(sharded)
    assert sorted(a) == list(range(1, 21)) and sorted(b) == sorted(a)
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-4 * abs(a[s]), (s, a[s], b[s])
    assert a[20] < a[1]  # it trains


@requires_devices(8)
def test_sharded_state_is_split_across_devices():
    cfg = cfg_for("/tmp/unused")
    dcfg = scratch_config(cfg, 1000)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    tx = make_optimizer(cfg.train, 10)
    state, _ = create_state(dcfg, tx, mesh, init_params(dcfg, mesh, 0))
    q = state["params"]["layers_0"]["attn"]["q_kernel"]  # [embed, heads, head_dim] -> (fsdp, tensor, -)
    assert q.shape == (32, 4, 8)
    assert {s.data.shape for s in q.addressable_shards} == {(16, 2, 8)}
    emb = state["params"]["embedding"]  # [vocab, embed] -> (tensor, fsdp)
    assert {s.data.shape for s in emb.addressable_shards} == {(500, 16)}
    adam = state["opt_state"][1][0]  # clip -> adamw(scale_by_adam state first)
    for moment in (adam.mu, adam.nu):
        m = moment["layers_0"]["mlp"]["gate_kernel"]  # [embed, mlp] -> (fsdp, tensor)
        assert {s.data.shape for s in m.addressable_shards} == {(16, 32)}
        per_device = max(s.data.nbytes for s in m.addressable_shards)
        assert per_device * 4 == m.nbytes


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    common = ["train.max_steps=5", "train.batch_rows=8", "mesh.num_devices=1", "mesh.data=1"]
    a = losses(train(cfg_for(tmp_path / "a", *common)))
    b = losses(train(cfg_for(tmp_path / "b", *common, "train.grad_accum=4")))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5 * abs(a[s])


def test_tiny_beats_the_predict_the_mean_baseline(tmp_path):
    run = train(
        load_config(TINY, [f"run_dir={tmp_path}", "logging.progress=false", "mesh.num_devices=1", "mesh.data=1"])
    )
    ev = json.load(open(os.path.join(run, "eval.json")))
    from rm_jax.core.attributes import ATTRIBUTES
    from rm_jax.data.pipeline import resolve_source
    from rm_jax.data.sources import load_helpsteer

    tr = load_helpsteer(resolve_source("bundled"), "train").rows
    va = load_helpsteer(resolve_source("bundled"), "validation").rows
    mean = np.array([[r[a] for a in ATTRIBUTES] for r in tr], float).mean(0)
    y = np.array([[r[a] for a in ATTRIBUTES] for r in va], float)
    baseline = float(((y - mean) ** 2).mean())
    assert ev["val_loss"] < 0.75 * baseline, (ev["val_loss"], baseline)
    assert os.path.exists(os.path.join(run, "DONE"))
    preds = open(os.path.join(run, "predictions", "validation.jsonl")).read().splitlines()
    assert len(preds) == len(va)


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'"),
        pytest.param(["mesh.data=3"], "does not match the 8 available devices", marks=requires_devices(8)),
        pytest.param(
            ["mesh.data=8", "train.batch_rows=4"],
            "does not divide over the data-parallel size",
            marks=requires_devices(8),
        ),
        (["model.path=/nonexistent/model"], "/nonexistent/model"),
        (["model.arch.hiden_size=3"], "model.arch.hiden_size"),
    ],
)
def test_bad_config_fails_before_compiling(tmp_path, override, message, monkeypatch):
    import rm_jax.training.loop as t

    monkeypatch.setattr(t, "make_train_step", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(Exception) as e:
        train(cfg_for(tmp_path, *override))
    assert message in str(e.value)


def test_hooks_fire_at_their_steps_on_a_real_run_and_after_a_resume(tmp_path, data_files):
    """log_every=3, eval_every=4, checkpoint.every_steps=3 over 7 steps; then the run is cut back to its
    step-4 checkpoint (as after a pre-emption) and run again."""
    run_dir = tmp_path / "run"
    cfg = cfg_for(
        run_dir,
        "train.max_steps=7",
        "train.log_every=3",
        "train.eval_every=4",
        "checkpoint.every_steps=3",
        "checkpoint.keep_latest=10",
        "mesh.num_devices=1",
        "mesh.data=1",
        f"data.train={data_files['train']}",
        f"data.validation={data_files['validation']}",
    )

    def records():
        with open(run_dir / "metrics.jsonl") as f:
            recs = [json.loads(x) for x in f]
        train_steps = [r["step"] for r in recs if "loss" in r]
        val_steps = [r["step"] for r in recs if "val_loss" in r]
        return recs, train_steps, val_steps

    train(cfg)
    first, train_steps, val_steps = records()
    assert train_steps == [1, 3, 6, 7] and val_steps == [4, 7]
    assert sorted(int(s) for s in os.listdir(run_dir / "checkpoints")) == [3, 4, 6, 7]
    assert first[0]["step"] == 0 and "attention_kernel" in first[0]

    for step in ("6", "7"):
        __import__("shutil").rmtree(run_dir / "checkpoints" / step)
    os.remove(run_dir / "DONE")
    train(cfg)
    again, train_steps, val_steps = records()
    assert train_steps == [1, 3, 5, 6, 7] and val_steps == [4, 7]  # step 5: the first step after the resume
    assert sorted(int(s) for s in os.listdir(run_dir / "checkpoints")) == [3, 4, 6, 7]
    before = {r["step"]: r for r in first if "loss" in r or "val_loss" in r}
    for r in again:
        if r["step"] in (6, 7) and ("loss" in r or "val_loss" in r):
            key = "loss" if "loss" in r else "val_loss"
            same = [b for b in first if b["step"] == r["step"] and key in b][0]
            assert r[key] == pytest.approx(same[key], rel=1e-6), (r, same)
    assert before[1] == [r for r in again if r["step"] == 1][0]  # lines up to the resumed step are kept as written


def test_label_probe_hook_runs_every_n_steps_and_matches_the_kept_checkpoint_probe(tmp_path, data_files, capsys):
    """eval.label_probe.every=2 on a 4-step SFT run: probe records at steps 2 and 4; the one at step 4 (the
    training state) equals eval.json's probe of the kept checkpoint (the same parameters, reloaded)."""
    run = train(
        cfg_for(
            tmp_path,
            "task=sft",
            "data.attributes_as_label=true",
            "train.max_steps=4",
            "mesh.num_devices=1",
            "mesh.data=1",
            f"data.train={data_files['train']}",
            f"data.validation={data_files['validation']}",
            "eval.label_probe.prompts=2",
            "eval.label_probe.max_new_tokens=6",
            "eval.label_probe.temperature=0",
            "eval.label_probe.every=2",
        )
    )
    recs = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    probes = [r for r in recs if "label_probe_higher_level_longer" in r]
    assert [r["step"] for r in probes] == [2, 4]
    ev = json.load(open(os.path.join(run, "eval.json")))
    assert ev["step"] == 4
    for level in ("0", "4"):
        for what in ("tokens", "chars"):
            got = probes[-1][f"label_probe_verbosity_{level}_{what}"]
            assert got == ev["label_probe"]["levels"][level][f"mean_response_{what}"], (level, what)
    # The probe reads the current parameters: step 2's answers differ from step 4's.
    assert any(probes[0][k] != probes[1][k] for k in probes[0] if k.endswith("_chars"))
    assert probes[-1]["label_probe_higher_level_longer"] == ev["label_probe"]["higher_level_longer"]
    err = capsys.readouterr().err
    assert "step 2: label probe verbosity 0: " in err and "step 4: label probe verbosity 0: " in err


def test_label_probe_every_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match="eval.label_probe.every must be >= 0"):
        train(cfg_for(tmp_path, "task=sft", "eval.label_probe.prompts=2", "eval.label_probe.every=-1"))


@pytest.mark.slow  # two short LoRA trainings: about 30 s on two CPU cores
def test_a_lora_run_restores_onto_the_base_it_holds(tmp_path, data_files, monkeypatch):
    """A LoRA run's checkpoints hold only adapters and head. Restoring one at the end of the run (the kept
    checkpoint) and on resume puts them on the base the run already holds in memory, not on a second read of
    the base from disk; the kept checkpoint then evaluates as it did when validated during training, and a
    resumed step equals the uninterrupted one (adapter dropout included)."""
    import shutil

    import rm_jax.engine.checkpoint as checkpoint
    import rm_jax.training.loop as loop
    from tests.helpers import make_hf_rm_with_tokenizer

    make_hf_rm_with_tokenizer("llama", str(tmp_path / "base"))
    reads = []
    read_base = checkpoint.fill_base
    monkeypatch.setattr(checkpoint, "fill_base", lambda run, *a: reads.append(run) or read_base(run, *a))
    seeds = []
    make_step = loop.make_train_step
    monkeypatch.setattr(
        loop, "make_train_step", lambda *a, seed, **k: seeds.append(seed) or make_step(*a, seed=seed, **k)
    )
    run_dir = tmp_path / "run"
    cfg = load_config(
        TINY,
        [
            f"run_dir={run_dir}",
            f"model.path={tmp_path / 'base'}",
            "model.arch={}",
            "lora.rank=4",
            "lora.dropout=0.1",  # resumed, step 2 draws step 2's masks again (keys from train.seed and the step)
            "train.seed=3",
            f"data.train={data_files['train']}",
            f"data.validation={data_files['validation']}",
            "train.max_steps=2",
            "train.eval_every=1",
            "checkpoint.every_steps=1",
            "checkpoint.keep_latest=5",
            "train.lr=1e-2",
            "train.warmup_steps=0",
            "logging.progress=false",
            "mesh.num_devices=1",
        ],
    )

    def val_losses():
        recs = [json.loads(x) for x in open(run_dir / "metrics.jsonl")]
        return {r["step"]: r["val_loss"] for r in recs if "val_loss" in r}

    def kept():
        ev = json.load(open(run_dir / "eval.json"))
        return ev["step"], ev["val_loss"]

    train(cfg)
    first = val_losses()
    step, loss = kept()
    assert sorted(first) == [1, 2] and loss == pytest.approx(first[step], rel=1e-6)
    assert abs(first[2] - first[1]) > 1e-4  # the steps moved the adapters: a wrong restore would show

    shutil.rmtree(run_dir / "checkpoints" / "2")  # back to step 1, as after a pre-emption
    os.remove(run_dir / "DONE")
    train(cfg)
    assert val_losses()[2] == pytest.approx(first[2], rel=1e-6)  # the resumed step 2 equals the first one
    assert kept()[1] == pytest.approx(first[kept()[0]], rel=1e-6)
    assert reads == []  # neither restore read the base again
    assert seeds == [3, 3]  # the dropout masks' seed is train.seed


def test_host_optimizer_state_needs_pinned_host_memory_before_compiling(tmp_path, monkeypatch):
    """train.optimizer_state_memory=host on a backend without pinned host memory: a ConfigError from the mesh
    building, before any data or compile work."""
    from types import SimpleNamespace

    import rm_jax.training.setup as setup

    class Device:
        platform = "fakeaccel"

        def addressable_memories(self):
            return [type("Memory", (), {"kind": "device"})()]

    monkeypatch.setattr(setup.jax, "devices", lambda: [Device()])
    monkeypatch.setattr(setup, "make_mesh", lambda *a, **k: pytest.fail("built a mesh"))
    cfg = cfg_for(tmp_path, "train.optimizer_state_memory=host", "mesh.num_devices=1", "mesh.data=1")
    with pytest.raises(ConfigError, match="needs a backend with a 'pinned_host' memory kind; fakeaccel devices offer"):
        train(cfg)
    # scoring a finished run (its final evaluation) holds no optimizer state: no check there
    monkeypatch.setattr(setup, "make_mesh", lambda *a, **k: SimpleNamespace(shape={"data": 1, "fsdp": 1}))
    assert setup.build_mesh(cfg, train_state=False).shape == {"data": 1, "fsdp": 1}


@pytest.mark.slow  # three short trainings: about a minute on two CPU cores
def test_host_optimizer_state_trains_checkpoints_and_resumes_as_on_the_device(tmp_path, data_files, monkeypatch):
    """train.optimizer_state_memory=host over a 2-device fsdp mesh: the run's optimizer state is created and
    restored in pinned host memory, its losses equal a run with the state on the device, and a run cut back to
    its step-2 checkpoint resumes to the same losses."""
    import shutil

    import jax

    import rm_jax.training.loop as loop
    from rm_jax.engine.checkpoint import Checkpointer

    if jax.device_count() < 2 or not all(
        "pinned_host" in [m.kind for m in d.addressable_memories()] for d in jax.devices()
    ):
        pytest.skip("needs 2 devices with pinned_host memory")
    kinds = []  # memory kinds of the optimizer state each run created or restored
    created, restore = loop.create_state, Checkpointer.restore

    def seen(state):
        kinds.append({x.sharding.memory_kind for x in jax.tree.leaves(state["opt_state"])})
        return state

    monkeypatch.setattr(loop, "create_state", lambda *a: (lambda out: (seen(out[0]), out[1]))(created(*a)))
    monkeypatch.setattr(
        Checkpointer, "restore", lambda self, *a: (lambda out: (seen(out[0]), out[1]))(restore(self, *a))
    )
    common = [
        "train.max_steps=4",
        "checkpoint.every_steps=2",
        "checkpoint.keep_latest=5",
        "mesh.num_devices=2",
        "mesh.data=1",
        "mesh.fsdp=2",
        f"data.train={data_files['train']}",
        "data.validation=null",
    ]
    device = losses(train(cfg_for(tmp_path / "device", *common)))
    run_dir = tmp_path / "host"
    cfg = cfg_for(run_dir, *common, "train.optimizer_state_memory=host")
    first = losses(train(cfg))
    assert sorted(first) == [1, 2, 3, 4]
    for s in first:
        assert first[s] == pytest.approx(device[s], rel=1e-6), (s, first[s], device[s])
    shutil.rmtree(run_dir / "checkpoints" / "4")  # back to step 2, as after a pre-emption
    os.remove(run_dir / "DONE")
    again = losses(train(cfg))
    for s in (3, 4):
        assert again[s] == pytest.approx(first[s], rel=1e-6), (s, again[s], first[s])
    # the device run's state; the host run's; the resumed run's, created and then restored from step 2 (without
    # validation no kept checkpoint is restored at the end)
    assert kinds == [{"device"}, {"pinned_host"}, {"pinned_host"}, {"pinned_host"}]
