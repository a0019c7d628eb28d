"""`rm-jax plan`: architecture lookup, per-device figures that follow the parameter count and the mesh, LoRA's
smaller optimizer state, the fit decision and the largest-batch search, every task's batch exactly as its
loader lays it out, a run continued from an earlier one (model.init_from), and the optimizer state in host
memory."""

from __future__ import annotations

import dataclasses
import gzip
import json

import jax
import pytest

from rm_jax.cli import main
from rm_jax.core.config import load_config
from rm_jax.core.errors import ConfigError
from rm_jax.data.pipeline import resolve_source
from rm_jax.engine.train_step import step_inputs
from rm_jax.training.plan import (
    _abstract_batch,
    format_plan,
    hf_architecture,
    largest_batch,
    parse_bytes,
    plan,
    planned_decoder,
)
from rm_jax.training.setup import scratch_config
from rm_jax.training.tasks import task_for
from tests.helpers import TINY, bundled_tokenizer

SMALL = ["mesh.data=1", "mesh.fsdp=-1", "train.batch_rows=4", "data.seq_len=64"]


def test_parse_bytes():
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("141GB") == 141 * 10**9
    assert parse_bytes("96G") == 96 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1000") == 1000
    with pytest.raises(ConfigError, match="80GiB"):
        parse_bytes("lots")


@pytest.mark.parametrize("limit_rows", [1, 3, 4, 36, 37, 100, 4096, 10**6])
@pytest.mark.parametrize("start", [4, 32, 64])
def test_largest_batch_finds_the_threshold(limit_rows, start):
    calls = []

    def fits(rows):
        calls.append(rows)
        return rows <= limit_rows

    got = largest_batch(fits, 4, start, 4096)
    want = min(limit_rows // 4 * 4, 4096)
    assert got == (want or None)
    assert all(r % 4 == 0 and r <= 4096 for r in calls)
    assert len(calls) <= 2 * 11 + 2  # doubling, then bisection: logarithmic


def test_known_models_table():
    hf, where = hf_architecture("meta-llama/Meta-Llama-3-70B")
    assert "table" in where
    cfg = load_config(TINY, ["model.path=meta-llama/Meta-Llama-3-70B", "model.arch={}"])
    dcfg, _ = planned_decoder(cfg)
    # Llama 3 70B: 70.55B parameters in its LM form; the reward model swaps the 1.05B LM head for 5 x 8192.
    assert dcfg.num_hidden_layers == 80 and abs(dcfg.num_params() - 69.5e9) < 0.05e9
    with pytest.raises(ConfigError, match="no local folder"):
        hf_architecture("nobody/no-such-model")


def test_plan_figures_follow_the_model_and_mesh():
    cfg = load_config(TINY, SMALL)
    one = plan(cfg, 1, 2**40, search=False)
    two = plan(cfg, 2, 2**40, search=False)
    n = one.dcfg.num_params()
    assert one.at_config.params == n * 4  # float32, all on one device
    assert one.at_config.optimizer >= 2 * n * 4  # AdamW's two moments
    assert one.at_config.gradients == n * 4
    # fsdp over 2 devices halves every matrix whose embed axis divides (norms stay whole)
    assert 0.5 * n * 4 <= two.at_config.params < 0.6 * n * 4
    assert one.fits and one.at_config.total >= one.at_config.params + one.at_config.optimizer
    assert one.at_config.temporaries > 0


def test_plan_lora_and_batch_search(tmp_path):
    from tests.helpers import make_hf_rm_with_tokenizer

    base = str(tmp_path / "base")
    make_hf_rm_with_tokenizer("llama", base)
    full = load_config(TINY, SMALL + [f"model.path={base}", "model.arch={}"])
    lora = load_config(TINY, SMALL + [f"model.path={base}", "model.arch={}", "lora.rank=2", "lora.base_dtype=bfloat16"])
    f, lo = plan(full, 1, 2**40, search=False), plan(lora, 1, 2**40, search=False)
    n = f.dcfg.num_params()
    assert lo.dcfg.lora_rank == 2
    assert lo.at_config.optimizer < 0.2 * f.at_config.optimizer  # moments for adapters + head only
    assert lo.at_config.params < 0.6 * f.at_config.params  # a bfloat16 base
    assert lo.at_config.gradients < 0.2 * n * 4


def test_plan_batch_search_answers_the_threshold():
    """A device exactly as large as the step at 32 rows: the answer fits and one row more does not.
    (XLA:CPU's totals are not monotone row by row at this tiny width, so the bounds are loose.) The search
    starts at the configured rows (the doubling and bisection on their own: test_largest_batch_*)."""
    at = {r: plan(load_config(TINY, SMALL + [f"train.batch_rows={r}"]), 1, 2**40, search=False) for r in (4, 32)}
    mem = at[32].at_config.total
    assert at[4].at_config.total < mem  # the activations grow with the rows
    rep = plan(load_config(TINY, SMALL + ["train.batch_rows=16"]), 1, mem, search=True, max_rows=256)
    best = rep.largest_batch_rows
    assert best is not None and 32 <= best < 64 and rep.fits
    assert rep.compiles >= 3  # 16 and 32 fit, 64 does not, then bisection
    nxt = plan(load_config(TINY, SMALL + [f"train.batch_rows={best + 1}"]), 1, 2**40, search=False)
    assert nxt.at_config.total > mem
    none = plan(load_config(TINY, SMALL + ["train.batch_rows=1"]), 1, 1000, search=True, max_rows=64)
    assert none.largest_batch_rows is None and not none.fits


def test_plan_cli(capsys):
    assert main(["plan", TINY, "--devices", "2", "--device-memory", "1GiB", "--no-search", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "per device" in out and "fits" in out and "'fsdp': 2" in out


# ---------------------------------------------------------------- every task's batch


def _pairs_file(path):
    with gzip.open(f"{resolve_source('bundled')}/train.jsonl.gz", "rt") as f:
        rows = [json.loads(x) for _, x in zip(range(12), f)]
    pairs = [
        {"prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"]} for a, b in zip(rows, rows[1:])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in pairs[::2]))
    return str(path)


def _groups_file(path):
    def group(i):
        resp = [
            {"from": "Assistant", "value": f"answer {j} " * (j + i + 1), "log(P(a|x,y))": -1.0 - j,
             "log(P(y|x))": -10.0 - j, "log(Q(y|a,x))": -9.0 - 2 * j}
            for j in range(2 + i % 2)
        ]  # fmt: skip
        prompt = [{"from": "User", "value": f"What is {i}+2?"}]
        return {"system": "", "prompt_turns": prompt, "label": "helpfulness:4,verbosity:1", "responses": resp}

    path.write_text("".join(json.dumps(group(i)) + "\n" for i in range(6)))
    return str(path)


# The task's config; its training data (None: the bundled sample).
TASK_DATA = {
    "rm": ([], None),
    "rm_unpacked": (["data.packing=false"], None),
    "pairs": (["data.kind=pairs", "loss.type=bt"], _pairs_file),
    "pairs_unpacked": (["data.kind=pairs", "loss.type=bt", "data.packing=false"], _pairs_file),
    "sft": (["task=sft"], None),
    "steerlm2": (["task=steerlm2", "model.path=/nonexistent/policy"], _groups_file),
}


@pytest.mark.parametrize("name", list(TASK_DATA))
def test_planned_batch_is_the_loaders(name, tmp_path):
    """Keys, shapes and dtypes of plan's abstract batch equal those of a real step's batch: the task's data
    read, encoded and laid out by the run's loader, with gradient accumulation."""
    overrides, data = TASK_DATA[name]
    train = data(tmp_path / "train.jsonl") if data else "bundled"
    common = ["run_dir=/tmp/unused", "data.seq_len=96", "data.max_segments=4", "train.batch_rows=8"]
    cfg = load_config(TINY, [*common, "train.grad_accum=2", f"data.train={train}", "data.max_prompts=6", *overrides])
    task = task_for(cfg)
    tok = bundled_tokenizer()
    enc, _ = task.load_split(cfg.data.train, cfg.data.train_split, tok, subset=True)
    real = step_inputs(task.loader(enc, tok.pad_token_id).next_step(cfg.train.grad_accum))
    planned = _abstract_batch(cfg, cfg.train.batch_rows // cfg.train.grad_accum)
    assert sorted(planned) == sorted(real)
    for k, v in real.items():
        assert (planned[k].shape, planned[k].dtype) == (v.shape, v.dtype), k
    assert real["input_ids"].shape == (2, 4, 96)


@pytest.mark.parametrize("name", ["pairs", "steerlm2"])
def test_plan_sizes_pairs_and_steerlm2(name, tmp_path):
    overrides, _ = TASK_DATA[name]
    if name == "steerlm2":  # a causal LM policy (plan reads only its config.json)
        from tests.helpers import make_hf_causal_lm_with_tokenizer

        make_hf_causal_lm_with_tokenizer("llama", str(tmp_path / "policy"))
        overrides = ["task=steerlm2", f"model.path={tmp_path / 'policy'}", "model.arch={}"]
    rep = plan(load_config(TINY, SMALL + overrides), 1, 2**40, search=False)
    assert rep.fits and rep.at_config.temporaries > 0
    assert rep.dcfg.head == ("lm" if name == "steerlm2" else "reward")


def _finished_run(path, cfg):
    """A run folder as far as plan reads it: its model_meta.json (the decoder without run options)."""
    dcfg = scratch_config(cfg, len(bundled_tokenizer()))
    run_options = ("dtype", "remat", "scan_layers", "attention", "attention_block", "matmul_precision")
    decoder = {k: v for k, v in dataclasses.asdict(dcfg).items() if k not in run_options}
    path.mkdir()
    meta = {"task": cfg.task, "decoder": decoder, "attributes": list(cfg.model.attributes), "template": None}
    (path / "model_meta.json").write_text(json.dumps(meta))
    return str(path)


def test_plan_a_run_continued_from_another(tmp_path):
    """model.init_from: the earlier run's architecture (not model.arch), with this run's options."""
    earlier = _finished_run(tmp_path / "reg", load_config(TINY, ["model.arch.num_hidden_layers=3"]))
    cfg = load_config(
        TINY, SMALL + [f"model.init_from={earlier}", "data.kind=pairs", "loss.type=bt", "model.remat=full"]
    )
    dcfg, where = planned_decoder(cfg)
    assert dcfg.num_hidden_layers == 3 and dcfg.remat == "full" and where.endswith("model_meta.json")
    rep = plan(cfg, 1, 2**40, search=False)
    assert rep.dcfg.num_params() == dcfg.num_params() and rep.fits
    with pytest.raises(ConfigError, match="head"):  # an rm run cannot start an sft run
        planned_decoder(load_config(TINY, SMALL + [f"model.init_from={earlier}", "task=sft"]))
    with pytest.raises(ConfigError, match="no model_meta.json"):
        planned_decoder(load_config(TINY, SMALL + [f"model.init_from={tmp_path / 'nowhere'}"]))


def test_plan_with_the_optimizer_state_in_host_memory(monkeypatch):
    """train.optimizer_state_memory=host: the step planned is the host-state step (its optimizer state in
    pinned_host), and that state is counted as host bytes; the step copies it onto the device for the update,
    which XLA:CPU's buffer assignment does not count, so the plan adds it to the device figure and says so."""
    import rm_jax.training.plan as plan_module

    built = []
    real = plan_module.make_train_step
    monkeypatch.setattr(plan_module, "make_train_step", lambda *a, **k: built.append(a[6]) or real(*a, **k))
    device = plan(load_config(TINY, SMALL), 1, 2**40, search=False).at_config
    rep = plan(load_config(TINY, SMALL + ["train.optimizer_state_memory=host"]), 1, 2**40, search=False)
    host, out = rep.at_config, format_plan(rep, "tiny.yaml")
    assert built[0] is None and {s.memory_kind for s in jax.tree.leaves(built[1])} == {"pinned_host"}
    assert (host.optimizer_memory, device.optimizer_memory) == ("host", "device") and device.host == 0
    assert host.optimizer == device.optimizer and host.params == device.params
    assert host.host == device.optimizer > 0
    assert "in HOST memory (train.optimizer_state_memory=host) between steps" in out
    assert "copies the host optimizer state to the device for the update" in out
    if jax.default_backend() == "cpu":
        # the state leaves the arguments (host memory) and comes back as the update's copy
        assert host.host_copy == device.optimizer and host.total == device.total
        assert "XLA:CPU's memory analysis does not separate host memory" in out
        line = next(x for x in out.splitlines() if x.strip().startswith("host copy"))
        assert f"{host.host_copy / 2**20:.2f} MiB" in line
    line = next(x for x in out.splitlines() if x.strip().startswith("host memory"))
    assert f"{host.host / 2**20:.2f} MiB" in line


# ---------------------------------------------------------------- what will run: adapter, validation, setup


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """A tiny HF reward model and a rank-2 PEFT adapter (q and v, alpha 8) for it."""
    from rm_jax.models.hf_io import load_hf_reward_model
    from rm_jax.models.lora import add_adapters, export_peft_adapter
    from rm_jax.models.sharding import make_mesh
    from tests.helpers import make_hf_rm_with_tokenizer

    d = tmp_path_factory.mktemp("plan_adapter")
    base = str(d / "base")
    make_hf_rm_with_tokenizer("llama", base)
    mesh = make_mesh(devices=jax.devices()[:1])
    lm = load_hf_reward_model(base, mesh)
    cfg = lm.cfg.replace(lora_rank=2, lora_alpha=8.0, lora_targets=("q", "v"))
    return base, export_peft_adapter(cfg, add_adapters(lm.params, cfg, mesh), str(d / "adapter"), base)


def test_plan_json_sizes_the_adapters_parameters(base_and_adapter, capsys):
    """Acceptance: `rm-jax plan --json` with model.adapter: the optimizer state of the adapter's parameters
    and the head only (AdamW: two float32 moments each), counted here from the adapter's own safetensors."""
    from safetensors.numpy import load_file

    base, adapter = base_and_adapter
    args = [f"model.path={base}", "model.arch={}", f"model.adapter={adapter}", "lora.base_dtype=bfloat16"]
    assert (
        main(["plan", TINY, "--devices", "1", "--device-memory", "1GiB", "--no-search", "--json", *SMALL, *args]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    tensors = load_file(f"{adapter}/adapter_model.safetensors")
    trained = sum(t.size for t in tensors.values())  # A and B of each adapted projection, and the score head
    head = tensors["base_model.model.score.weight"].size
    per = out["per_device_bytes"]
    assert 0 <= per["optimizer_state"] - 2 * 4 * trained <= 16  # plus AdamW's step counter
    assert per["gradients"] == 4 * trained
    model = out["model"]
    assert (model["lora_rank"], model["lora_alpha"], model["lora_targets"]) == (2, 8.0, ["q", "v"])
    assert model["base_dtype"] == "bfloat16" and out["schema"] == "rm_jax.plan/1"
    n = model["parameters"]  # the base model's (with its head); the frozen part bfloat16, the rest float32
    assert per["params"] == 2 * (n - head) + 4 * trained
    keys = "params optimizer_state optimizer_state_memory host host_copy gradients temporaries train_step"
    assert set(per) == set(keys.split()) | {"eval_temporaries", "eval_forward", "load_peak", "peak"}
    assert per["peak"] == max(per["train_step"], per["eval_forward"], per["load_peak"])
    assert out["fits"] is (per["peak"] <= 2**30) and out["largest_batch_rows"] is None and out["eval_rows"] == 16
    with pytest.raises(ConfigError, match="lora.alpha=16.*lora.targets"):  # keys the adapter would override
        planned_decoder(load_config(TINY, SMALL + args + ["lora.alpha=16.5", "lora.targets=[q]"]))


def test_plan_compiles_the_validation_forward(monkeypatch):
    """The validation forward (validators.validation_function, the function a run's validation calls) compiled
    at train.eval_rows: its temporaries grow with the rows, it is counted with the train state resident, and it
    alone can make a config not fit."""
    import rm_jax.training.plan as plan_module

    seen = []
    real = plan_module.validation_function
    monkeypatch.setattr(plan_module, "validation_function", lambda *a: seen.append(a) or real(*a))
    small = plan(load_config(TINY, SMALL + ["train.eval_rows=2"]), 1, 2**40, search=False)
    big = plan(load_config(TINY, SMALL + ["train.eval_rows=64"]), 1, 2**40, search=False)
    assert len(seen) == 2 and (small.eval.rows, big.eval.rows) == (2, 64)
    assert 0 < small.eval.temporaries < big.eval.temporaries
    m = big.at_config
    assert big.eval.total > m.params + m.optimizer + big.eval.temporaries  # state resident + batch and outputs
    assert big.eval.total > m.total  # 64 rows of forward outweigh 4 rows of training at this size
    short = plan(load_config(TINY, SMALL + ["train.eval_rows=64"]), 1, m.total + 1, search=True, max_rows=8)
    assert short.at_config.total <= m.total + 1 and not short.fits and short.largest_batch_rows is None
    assert "validation" in format_plan(big, "tiny.yaml")
