"""Accelerator benchmark: rm_jax against transformers + torch on the same card, in one command.

A Llama-3.2-1B-shaped reward model (5 labels, bf16 compute, fp32 params + AdamW, remat
``dots_no_batch``, scanned layers), random weights, synthetic HelpSteer2-shaped conversations (the
paper's Table 2 lengths; no internet, no ``datasets``/``grain``/``tensorboardX``). Sections:

  peak          the card's bf16 matmul rate: best of repeated 8192^3 ``jnp.dot`` and ``torch.matmul``; every
                MFU below divides by the higher of the two (``mfu``) and by the card's data-sheet dense
                bf16 peak (``mfu_spec``; null with a note for a card not in bench_common.SPEC_BF16_FLOPS)
  rm_jax:KERNEL rm_jax's real train step (``make_train_step`` jitted with donated, sharded state as
                the train loop does) on 4 packed rows x 4096, per ``model.attention`` kernel
                (``--attention auto,cudnn_dense,xla``); step time, tokens/s, real tokens/s, MFU, peak memory;
                and, before anything is allocated, ``rm-jax plan``'s size of the same step compiled by this
                backend (``plan_total_bytes``, ``plan_vs_peak`` = plan / peak_bytes_in_use; floor
                plan_within_15pct on rm_jax:auto and the LoRA section; ``--no-plan-memory`` skips it)
  torch_dense   transformers LlamaForSequenceClassification, sdpa attention, bf16 autocast over fp32
                params, gradient checkpointing, fused AdamW: 4 x 4096 full rows
  torch_packed  the same model and trainer fed rm_jax:auto's packed rows (same conversations, rows x seq_len,
                real tokens) padding-free: position ids restarting per conversation, flex attention (compiled)
                with a per-document causal BlockMask (sdpa with the dense block-diagonal mask on a CPU, which
                has no flex backward, or if flex fails: ``attention_fallback`` says why), reward at each
                conversation's last token -> score -> MSE; --smoke checks its scores equal each conversation
                run alone (no attention across conversations). The baseline for floor auto_vs_torch_packed >= 1.3
  torch_trl     the same trainer fed TRL's way: 16 conversations per batch right-padded to the longest
  score_parity  ``rm-jax score``'s path (rm_jax.models.hf_io + rm_jax.engine.scoring.Scorer) in float32 on this
                device against transformers float32 on the CPU, tiny random llama and qwen3 RMs; with
                the shipped precision (highest for float32) and with ``matmul_precision=default``
  generate      the same shape with an LM head: rm_jax's KV-cache sampler (``rm-jax lm generate``'s path)
                against transformers ``generate``, greedy, bf16, 8 prompts x (256 + 128 new) tokens
  rm_jax_lora:KERNEL / torch_peft   (not in the default plan) a Llama-3.1-8B-shaped RM with LoRA rank
                ``--lora-rank`` (16) on all seven projections, the base frozen in bf16: rm_jax against
                transformers + peft (same rank and targets, sdpa, bf16 autocast, gradient checkpointing);
                floor lora_vs_torch_peft >= 1.5. ``--sections rm_jax_lora:auto,torch_peft``
  full_ft:OPTION (not in the default plan) the largest Llama-3-shaped full fine-tune (ft_ladder: ~12B, 3.1-8B,
                3.2-3B, 3.2-1B; 1 row x seq_len, bf16 compute, ``--ft-remat`` full, scan) that fits one device
                with OPTION = adamw (float32 moments), adamw_bf16, adafactor or adamw_host (optimizer state in
                host memory; skipped in a build without train.optimizer_state_memory): ``rm-jax plan``
                largest-first against the device's bytes_limit (``--card-memory``; --smoke: a pretend 24 MiB
                card), then a real run of the rung that fits (``--ft-steps`` 3): peak memory, tokens/s, plan/peak

  score:SHAPE / torch_score:SHAPE   (not in the default plan) scoring, SHAPE 1b or 8b (Llama-3.2-1B, 3.1-8B):
                ``rm-jax score``'s path (Scorer.predict, packed rows of --seq-len, --score-rows a pass, attention
                auto; bf16, and float32 on 1B) against transformers under no_grad: bf16 sdpa and flash_attention_2
                over length-sorted batches (--torch-score-batch), bf16 padding-free packing (flash_attention_2
                with restarting position ids, DataCollatorWithFlattening's feed; only where flash_attn is
                installed), float32 sdpa (1B); the same HelpSteer2-shaped conversations, real tokens/s, median of
                --score-passes passes after a warm-up. Floor score_SHAPE_vs_best_torch >= 2 (bf16 against the
                best bf16 transformers run). ``--sections score``

  share:score / share:train:SHAPE   (not in the default plan) prefix sharing (issue 31), shared vs unshared in one
                run: scripts/bench_share.py's ``main`` called in the section's process on the Llama-3.2-1B shape
                (bf16, attention auto; --smoke: tiny, float32), rows of --share-seq-len (2048) x --share-rows (4),
                --share-prompts prompts (64) of each shape: ``share:score`` scores helpsteer2, rb2, long_pairs,
                groups8 and short (Scorer.predict, share False / True / auto); ``share:train:SHAPE`` times an epoch
                of train steps over one shape, unshared and shared. Floors (SHARE_FLOORS): rb2 scoring >= 1.6,
                groups8 scoring and training >= 2.5, long_pairs training >= 1.5, helpsteer2 training >= 1.15,
                short scoring (share auto) >= 0.95. ``--sections share`` (--smoke: share:score and share:train,
                every shape in one process). A train step holds whole groups: groups8 runs 8 rows a step

Named groups for ``--sections``: ``memory`` (rm_jax:auto,rm_jax_lora:auto), ``full_ft`` (all four options),
``big_rm`` (rm_jax:auto,torch_packed,rm_jax_lora:auto,torch_peft: the plan, packed-baseline and LoRA floors),
``score`` (score:1b,torch_score:1b,score:8b,torch_score:8b) and ``share`` (share:score, share:train:SHAPE for
the five shapes);
each is about one 10-minute call: ``bash scripts/bench_gpu.sh --sections full_ft --budget-s 580``.

Each section runs in its own process (``--section NAME``): torch and XLA do not share the card's
memory, and a failure or a time-out in one (say, out of memory) is recorded without losing the
rest. The parent adds ratios to every rm_jax section, ``ratio_vs_torch_dense`` (tokens/s against
torch_dense), ``ratio_vs_torch_packed`` (real tokens/s against torch_packed),
``ratio_real_tokens_vs_trl_padded`` (real tokens/s against torch_trl) and ``mfu``, checks the issue's floors,
prints one JSON object (also $OUT/bench_gpu.json when OUT is set) and a short table last. ``--smoke`` runs
tiny shapes anywhere, CPU included, to prove the script.

Adding a section (a serving line, say): write ``def section_NAME(a) -> dict`` that measures
one thing and returns JSON-able numbers, register it in ``SECTIONS`` with a time limit, and add its
name to ``DEFAULT_PLAN`` (or pass ``--sections``); derived figures go in ``derive``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

T0 = time.perf_counter()
# Children log on the parent's clock, so the lines of one run read in one time line.
WALL0 = float(os.environ.setdefault("BENCH_GPU_WALL0", str(time.time())))


def log(msg: str) -> None:
    print(f"[bench_gpu {time.time() - WALL0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- shapes and data


def arch(smoke: bool) -> dict:
    if smoke:
        return dict(
            vocab_size=1000,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
    # meta-llama/Llama-3.2-1B's config.json
    return dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def arch_8b(smoke: bool) -> dict:
    """meta-llama/Llama-3.1-8B's config.json (the LoRA sections; smoke: the tiny shape)."""
    if smoke:
        return arch(True)
    return dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def model_config(a: argparse.Namespace, attention: str, lora: bool = False) -> Any:
    from rm_jax.models.llama import DecoderConfig

    return DecoderConfig(
        model_type="llama",
        num_labels=5,
        dtype="bfloat16",
        remat=a.remat,
        scan_layers=not a.no_scan,
        attention=attention,
        **(arch_8b(a.smoke) if lora else arch(a.smoke)),
    )


def conversations(rng: np.random.Generator, n: int, seq_len: int, vocab: int) -> list[np.ndarray]:
    """n HelpSteer2-shaped conversations (token ids >= 3: never the pad id), truncated to seq_len."""
    from bench_common import helpsteer_token_lengths

    lengths, _ = helpsteer_token_lengths(rng, n, seq_len)
    return [rng.integers(3, vocab, int(t), dtype=np.int64).astype(np.int32) for t in lengths]


def packed_batches(a: argparse.Namespace, vocab: int) -> tuple[list, dict]:
    """HelpSteer2-shaped conversations packed into fixed [1, rows, seq_len] batches (accumulation axis of 1)."""
    from rm_jax.data.packing import build_batch, plan_packed

    rng = np.random.default_rng(a.seed)
    need = min(a.warmup + a.steps, 8) * a.rows
    n = max(8, int(need * a.seq_len / 500))
    while True:
        convs = conversations(rng, n, a.seq_len, vocab)
        bins = plan_packed([len(c) for c in convs], a.seq_len, a.max_segments)
        if len(bins) >= need + 1:  # the last bin may be partly empty: leave it out
            break
        n *= 2
    labels = rng.integers(0, 5, (len(convs), 5)).astype(np.float32)
    out = []
    for k in range(0, need, a.rows):
        b = build_batch(
            convs, labels, np.ones_like(labels), bins[k : k + a.rows], a.seq_len, a.max_segments, 0, rows=a.rows
        )
        b.pop("example_index")
        out.append({key: v[None] for key, v in b.items()})
    real = sum(int((b["segment_ids"] > 0).sum()) for b in out)
    return out, {"real_tokens": real, "fill": real / (len(out) * a.rows * a.seq_len)}


# ---------------------------------------------------------------- sections (each runs in its own process)


def section_peak(a: argparse.Namespace) -> dict:
    """Best bf16 x bf16 -> bf16 matmul rate of jnp.dot and of torch.matmul (random operands, never zeros)."""
    import jax
    import jax.numpy as jnp

    n, reps = (512, 5) if a.smoke else (a.peak_n, 20)
    ka, kb = jax.random.split(jax.random.key(1))
    x = jax.random.normal(ka, (n, n), jnp.bfloat16)
    y = jax.random.normal(kb, (n, n), jnp.bfloat16)
    f = jax.jit(lambda p, q: jnp.dot(p, q, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    f(x, y).block_until_ready()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(x, y).block_until_ready()
        ts.append(time.perf_counter() - t)
    flops = 2.0 * n**3
    dev = jax.devices()[0]
    out = {
        "n": n,
        "best_flops": flops / min(ts),
        "median_flops": flops / statistics.median(ts),
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "jax": jax.__version__,
    }
    log(f"jnp.dot bf16 {n}^3: {out['best_flops'] / 1e12:.1f} TFLOP/s on {dev.device_kind}")
    del x, y
    try:  # the same product in torch, on its CUDA device when it has one (CPU in --smoke off a GPU)
        out.update(_torch_matmul_rate(n, reps))
        log(f"torch.matmul bf16 {n}^3: {out['torch_best_flops'] / 1e12:.1f} TFLOP/s on {out['torch_device']}")
    except Exception as e:  # recorded, not fatal: MFU then divides by jnp.dot's rate alone
        out["torch_error"] = f"{type(e).__name__}: {e}"[:300]
        log(f"torch.matmul: {out['torch_error']}")
    return out


def _torch_matmul_rate(n: int, reps: int) -> dict:
    import torch

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(n, n, generator=g, device=dev, dtype=torch.bfloat16)
    y = torch.randn(n, n, generator=g, device=dev, dtype=torch.bfloat16)
    torch.matmul(x, y)
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(x, y)
        sync()
        ts.append(time.perf_counter() - t)
    flops = 2.0 * n**3
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    return {
        "torch_best_flops": flops / min(ts),
        "torch_median_flops": flops / statistics.median(ts),
        "torch_device": name,
        "torch": torch.__version__,
    }


def section_rm_jax(a: argparse.Namespace, attention: str, lora: bool = False) -> dict:
    """rm_jax's train step on packed rows, timed as the train loop runs it (metrics fetched every step). With
    ``lora``: the Llama-3.1-8B shape, LoRA rank ``--lora-rank`` on all seven projections, the base frozen in bf16."""
    import jax
    from bench_common import new_train_state

    import rm_jax.data.packing  # noqa: F401
    import rm_jax.engine.train_step  # noqa: F401
    import rm_jax.models  # noqa: F401
    from rm_jax.core.flops import flops_per_token
    from rm_jax.engine.train_step import batch_shardings, lr_schedule, make_optimizer, make_train_step, put_batch
    from rm_jax.models.attention import KernelUnavailableError
    from rm_jax.models.sharding import make_mesh

    imports = {"datasets": "datasets" in sys.modules, "grain": "grain" in sys.modules}
    cfg = model_config(a, attention, lora)
    try:
        kernel = cfg.attention_kernel()
    except KernelUnavailableError as e:  # cudnn* without a GPU: the typed error, before compiling
        return {"skipped": str(e)}
    batches, info = packed_batches(a, cfg.vocab_size)
    mesh = make_mesh(devices=jax.devices()[:1])
    if lora:
        cfg = cfg.replace(lora_rank=a.lora_rank, lora_alpha=2.0 * a.lora_rank)
    # The step's optimizer, schedule and loss come from the RunConfig `rm-jax plan` sizes, so the plan and the
    # timed step are one program; planned before anything is allocated (a compile only).
    rc = bench_run_config(a, cfg, a.rows)
    planned = plan_memory(rc, cfg, mesh, a.rows) if a.plan_memory else {}
    tc = rc.train
    tx = make_optimizer(tc, 1000)
    t = time.perf_counter()
    if lora:
        from rm_jax.engine.train_step import create_state
        from rm_jax.models.lora import add_adapters

        state, shard = create_state(cfg, tx, mesh, add_adapters(_bf16_base(cfg, mesh, a.seed), cfg, mesh, a.seed))
    else:
        state, shard = new_train_state(cfg, tx, mesh, a.seed)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    before_step = _memory_stats()
    step = jax.jit(
        make_train_step(cfg, rc.loss, tx, a.max_segments, lr_schedule(tc, 1000), mesh),
        in_shardings=(shard, None),
        out_shardings=(shard, None),
        donate_argnums=0,
    )
    sh = batch_shardings(mesh, batches[0], accum=True)
    times, compile_s, m = [], None, {}
    for i in range(a.warmup + a.steps):
        b = batches[i % len(batches)]
        t = time.perf_counter()
        state, m = step(state, put_batch(b, sh))
        m = jax.device_get(m)  # waits for the step
        dt = time.perf_counter() - t
        if not bool(m["ok"]):
            raise RuntimeError(f"non-finite loss at step {i}: {m['loss']}")
        if i == 0:
            compile_s = dt
            log(f"rm_jax:{attention} ({kernel}): compile + first step {dt:.1f} s")
        elif i >= a.warmup:
            times.append(dt)
    slots = a.rows * a.seq_len
    real = statistics.median(int((b["segment_ids"] > 0).sum()) for b in batches)
    med = statistics.median(times)
    out = {
        "kernel": kernel,
        "step_s": med,
        "step_s_all": [round(x, 4) for x in times],
        "compile_and_first_step_s": round(compile_s, 2),
        "init_s": round(init_s, 2),
        "rows": a.rows,
        "seq_len": a.seq_len,
        "tokens_per_s": slots / med,
        "real_tokens_per_s": real / med,
        "flops_per_token": flops_per_token(cfg, a.seq_len),
        "loss_last": float(m["loss"]),
        "fill": info["fill"],
        "imports": imports,
        "jax": jax.__version__,
        "device_kind": jax.devices()[0].device_kind,
    }
    if lora:
        out.update(lora_rank=a.lora_rank, lora_targets="q,k,v,o,gate,up,down", base_dtype="bfloat16")
    if kernel == "cudnn":  # which packed path ran: native GQA, or kv heads repeated for an older JAX
        from rm_jax.models.cudnn import _packed_attention_fn

        out["cudnn_gqa_native"] = _packed_attention_fn()[2]
    stats = _memory_stats()
    if "peak_bytes_in_use" in stats:
        out["peak_memory_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
    out.update(planned, **_plan_vs_peak(planned, before_step, stats))
    log(f"rm_jax:{attention}: step {med * 1e3:.1f} ms, {out['tokens_per_s']:.0f} tok/s{_plan_note(out)}")
    return out


# ---------------------------------------------------------------- memory: `rm-jax plan` against the measured peak

_RUN_OPTS = ("dtype", "remat", "scan_layers", "attention", "attention_block", "matmul_precision")
_NOT_ARCH = {
    *_RUN_OPTS,
    "shared_prompts",  # data.share_prompts decides it
    "num_labels",
    "head",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "lora_lm_head",
    "lora_dropout",
    "lora_rslora",
    "attribute_head",  # the head's kind, levels and separate reward output come from model.head / loss
    "label_levels",
    "reward_head",
}


def bench_run_config(a: argparse.Namespace, cfg: Any, rows: int, **train: Any) -> Any:
    """The RunConfig whose planned model is ``cfg`` (rm_jax.training.plan.planned_decoder gives ``cfg`` back: the
    test checks it) and whose train step is the bench's: lr 1e-5, no warm-up, the default loss, ``rows`` packed
    rows of seq_len, one micro-batch; ``train`` overrides TrainConfig fields (the optimizer options)."""
    import dataclasses

    from rm_jax.core.config import RunConfig, from_dict

    if cfg.num_labels != 5:  # the default attributes (and the loss's five weights) are HelpSteer2's
        raise ValueError(f"the bench plans 5-label reward models, not {cfg.num_labels}")
    arch_dict = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _NOT_ARCH}
    data = {
        "model": {"arch": arch_dict, **{k: getattr(cfg, k) for k in _RUN_OPTS}},
        "data": {"seq_len": a.seq_len, "max_segments": a.max_segments, "packing": True},
        "train": {"batch_rows": rows, "grad_accum": 1, "lr": 1e-5, "warmup_steps": 0, **train},
        "mesh": {"data": 1},
        "lora": {
            "rank": cfg.lora_rank,
            "alpha": cfg.lora_alpha,
            "targets": list(cfg.lora_targets),
            "base_dtype": "bfloat16" if cfg.lora_rank else "float32",
        },
    }
    # from_dict types every key but skips validate(): that wants LoRA on a model.path, and the bench's LoRA base
    # is a random model.arch.
    return from_dict(RunConfig, data)


def plan_memory(rc: Any, cfg: Any, mesh: Any, rows: int) -> dict:
    """`rm-jax plan`'s figures for ``rc`` (its step compiled for this process's backend, nothing allocated), or
    the error that stopped it (the timing goes on without them)."""
    import jax

    from rm_jax.training.plan import planned_decoder, step_memory

    try:
        dcfg, _ = planned_decoder(rc)
        out: dict = {"plan_backend": jax.default_backend()}
        if dcfg != cfg:  # the comparison would not be like for like: say which fields differ
            out["plan_config_mismatch"] = sorted(k for k in vars(cfg) if getattr(cfg, k) != getattr(dcfg, k, None))
        m = step_memory(rc, dcfg, mesh, rows)
    except Exception as e:  # recorded, not fatal
        log(f"plan: FAILED {type(e).__name__}: {str(e)[:300]}")
        return {"plan_error": f"{type(e).__name__}: {str(e)[:500]}"}
    out.update(
        plan_total_bytes=m.total,
        plan_params_bytes=m.params,
        plan_optimizer_bytes=m.optimizer,
        plan_gradients_bytes=m.gradients,
        plan_temporaries_bytes=m.temporaries,
        plan_compile_s=m.compile_s,
    )
    if m.optimizer_memory == "host":  # where the host figure came from says whether this backend separates it
        out.update(plan_host_bytes=m.host, plan_host_from=m.host_from)
    log(f"plan ({out['plan_backend']}): {m.total / 2**30:.2f} GiB per device, compiled in {m.compile_s} s")
    return out


def _bf16_base(cfg: Any, mesh: Any, seed: int) -> Any:
    """LoRA's frozen base initialised and cast to bf16 in one jit: the float32 base (30 GiB at 8B) is never
    whole on the card, so the init's peak stays under the step's and peak_bytes_in_use measures the step."""
    import jax

    from rm_jax.models import init_params
    from rm_jax.models.lora import cast_frozen

    return jax.jit(lambda: cast_frozen(cfg, init_params(cfg.replace(lora_rank=0), mesh, seed), "bfloat16"))()


def _memory_stats() -> dict:
    import jax

    return jax.devices()[0].memory_stats() or {}  # None on the CPU backend


def _plan_vs_peak(planned: dict, before_step: dict, after: dict) -> dict:
    """The measured peak beside the plan: plan_vs_peak = plan_total / peak (None where either is missing).
    ``peak_set_by_step`` is False when the peak was reached before the first step (then it is not the step's)."""
    import jax

    peak = after.get("peak_bytes_in_use")
    if peak is None:
        return {"peak_bytes": None, "plan_vs_peak": None, "peak_note": f"{jax.default_backend()} reports no peak"}
    out = {"peak_bytes": int(peak), "peak_set_by_step": peak > before_step.get("peak_bytes_in_use", 0)}
    total = planned.get("plan_total_bytes")
    out["plan_vs_peak"] = total / peak if total else None
    return out


def _plan_note(r: dict) -> str:
    if r.get("plan_vs_peak") is None:
        return ""
    plan, peak = r["plan_total_bytes"] / 2**30, r["peak_bytes"] / 2**30
    return f"; plan {plan:.2f} GiB / peak {peak:.2f} GiB = {r['plan_vs_peak']:.3f}"


# Full fine-tunes, largest first: Llama-3-shaped rungs (config.json figures; the top one a Llama-3 layout at
# hidden 5120 x 40 layers, ~12B, a rung above 8B). Each section plans down the ladder until one fits the card,
# then confirms it with a real run.
def ft_ladder(smoke: bool) -> list[tuple[str, dict]]:
    if smoke:  # tiny rungs; the top one is over the pretend card on its parameters alone
        tiny = arch(True)
        return [
            ("tiny-h512-l4", dict(tiny, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, head_dim=64)),
            ("tiny-h256-l4", dict(tiny, hidden_size=256, intermediate_size=512, num_hidden_layers=4, head_dim=32)),
            ("tiny-h128-l2", dict(tiny, hidden_size=128, intermediate_size=256, head_dim=32)),
            ("tiny-h64-l2", tiny),
        ]
    b8 = arch_8b(False)
    three = dict(
        arch(False),
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        head_dim=128,
    )  # meta-llama/Llama-3.2-3B's config.json: the 1B's vocabulary, rope and tied embeddings
    twelve = dict(b8, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)
    return [
        ("llama3-5120x40 (~12B)", twelve),
        ("Llama-3.1-8B", b8),
        ("Llama-3.2-3B", three),
        ("Llama-3.2-1B", arch(False)),
    ]


# full_ft:OPTION -> TrainConfig fields. adamw_host needs train.optimizer_state_memory (the offload work); a build
# without that field lists the option and skips it.
FT_OPTIONS = {
    "adamw": {"optimizer": "adamw"},
    "adamw_bf16": {"optimizer": "adamw", "optimizer_state_dtype": "bfloat16"},
    "adafactor": {"optimizer": "adafactor"},
    "adamw_host": {"optimizer": "adamw", "optimizer_state_memory": "host"},
}
SMOKE_CARD_BYTES = 24 * 2**20  # --smoke: a pretend card (a CPU reports no memory limit)


def card_memory(a: argparse.Namespace) -> tuple[int, str]:
    """(bytes a full fine-tune may use on one device, where that figure comes from)."""
    from rm_jax.training.plan import parse_bytes

    if a.card_memory:
        return parse_bytes(a.card_memory), f"--card-memory {a.card_memory}"
    if a.smoke:
        return SMOKE_CARD_BYTES, "pretend card (--smoke: this device's own limit is not used)"
    limit = _memory_stats().get("bytes_limit")
    if not limit:
        raise RuntimeError("this backend reports no memory limit (bytes_limit): give --card-memory, e.g. 141GB")
    return int(limit), "device.memory_stats()['bytes_limit'] (XLA_PYTHON_CLIENT_MEM_FRACTION of the card)"


def section_full_ft(a: argparse.Namespace, option: str) -> dict:
    """The largest Llama-shaped full fine-tune that fits one device with one optimizer-memory option: `rm-jax
    plan`'s step_memory largest-first down ft_ladder (a rung whose state and gradients alone are over the card is
    passed over without a compile), then the chosen rung run for real: --ft-steps steps of the real train step on
    random weights and one random [1, 1, seq_len] batch; peak memory and tokens/s beside the plan."""
    import dataclasses

    import jax
    from bench_common import largest_fitting

    from rm_jax.core.config import TrainConfig
    from rm_jax.models.sharding import make_mesh

    if option not in FT_OPTIONS:
        raise ValueError(f"unknown full_ft option {option!r}: choose {', '.join(FT_OPTIONS)}")
    train = FT_OPTIONS[option]
    missing = sorted(set(train) - {f.name for f in dataclasses.fields(TrainConfig)})
    if missing:
        return {"skipped": f"train.{missing[0]}: not available in this build (TrainConfig has no such field)"}
    limit, limit_from = card_memory(a)
    mesh = make_mesh(devices=jax.devices()[:1])
    rows = 1
    ladder = [(name, _ft_config(a, spec), spec) for name, spec in ft_ladder(a.smoke)]
    rcs = {name: bench_run_config(a, cfg, rows, **train) for name, cfg, _ in ladder}
    chosen, tried = largest_fitting(
        ladder, lambda r: _state_floor(rcs[r[0]], r[1]), lambda r: plan_memory(rcs[r[0]], r[1], mesh, rows), limit
    )
    out = {
        "option": option,
        "train": train,
        "card_bytes": limit,
        "card_from": limit_from,
        "rows": rows,
        "seq_len": a.seq_len,
        "remat": a.ft_remat,
        "ladder": [{"name": name, "params": cfg.num_params(), **rec} for (name, cfg, _), rec in zip(ladder, tried)],
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
    }
    if chosen is None:
        out["skipped"] = "no rung of the ladder fits"
        return out
    name, cfg, _ = ladder[chosen]
    out.update(model=name, params=cfg.num_params(), **tried[chosen])
    log(f"full_ft:{option}: {name} fits per plan ({out['plan_total_bytes'] / 2**30:.2f} GiB); confirming")
    try:
        out.update(_ft_run(a, rcs[name], cfg, mesh, rows, tried[chosen]))
    except Exception as e:  # an out-of-memory here is the finding: the plan said it fits
        out["run_error"] = f"{type(e).__name__}: {str(e)[:1500]}"
        log(f"full_ft:{option}: the confirming run FAILED {out['run_error'][:300]}")
        return out
    log(f"full_ft:{option}: {name} ran: {out['tokens_per_s']:.0f} tok/s{_plan_note(out)}")
    return out


def _ft_config(a: argparse.Namespace, spec: dict) -> Any:
    from rm_jax.models.llama import DecoderConfig

    return DecoderConfig(
        model_type="llama",
        num_labels=5,
        dtype="bfloat16",
        remat=a.ft_remat,
        scan_layers=not a.no_scan,
        attention="auto",
        **spec,
    )


def _state_floor(rc: Any, cfg: Any) -> int:
    """Bytes the step needs whatever XLA does: parameters, optimizer state (unless it lives on the host) and the
    float32 gradients of the trainable leaves. Shapes only: no compile."""
    import jax
    import numpy as np

    from rm_jax.engine.train_step import init_state, make_optimizer
    from rm_jax.models import abstract_params

    state = jax.eval_shape(lambda p: init_state(cfg, make_optimizer(rc.train, 1000), p), abstract_params(cfg))
    size = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    host = getattr(rc.train, "optimizer_state_memory", "device") == "host"
    return 2 * size(state["params"]) + (0 if host else size(state["opt_state"]))  # params + float32 gradients


def _ft_run(a: argparse.Namespace, rc: Any, cfg: Any, mesh: Any, rows: int, planned: dict) -> dict:
    """--ft-steps steps of the step plan compiled (the same jit: shardings, donation, loss, schedule), on
    random weights and one random batch. The first step compiles again: plan's executable is not kept, and a
    second lowering in one process numbers its private functions differently, so jax's persistent cache misses."""
    import jax
    from bench_common import new_train_state

    from rm_jax.engine.train_step import batch_shardings, lr_schedule, make_optimizer, make_train_step
    from rm_jax.models.sharding import replicated
    from rm_jax.training.plan import _abstract_batch

    tx = make_optimizer(rc.train, 1000)
    memory = rc.train.optimizer_state_memory
    t = time.perf_counter()
    state, shard = new_train_state(cfg, tx, mesh, a.seed, memory)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    spec = _abstract_batch(rc, rows)
    rng = np.random.default_rng(a.seed)
    host = {
        "input_ids": rng.integers(3, cfg.vocab_size, spec["input_ids"].shape),
        "segment_ids": np.ones(spec["segment_ids"].shape),  # one conversation per row
        "positions": np.broadcast_to(np.arange(a.seq_len), spec["positions"].shape),
        "labels": rng.integers(0, 5, spec["labels"].shape),
        "label_mask": np.ones(spec["label_mask"].shape),
    }
    host = {k: np.asarray(v, dtype=spec[k].dtype) for k, v in host.items()}
    before_step = _memory_stats()
    bshard = batch_shardings(mesh, spec, accum=True)
    step = jax.jit(
        make_train_step(
            cfg,
            rc.loss,
            tx,
            a.max_segments,
            lr_schedule(rc.train, 1000),
            mesh,
            shard["opt_state"] if memory == "host" else None,
        ),
        in_shardings=(shard, bshard),
        out_shardings=(shard, replicated(mesh)),
        donate_argnums=0,
    )
    batch = jax.device_put(host, bshard)
    times = []
    for i in range(a.ft_steps):
        t = time.perf_counter()
        state, m = step(state, batch)
        m = jax.device_get(m)
        times.append(time.perf_counter() - t)
        if not bool(m["ok"]):
            raise RuntimeError(f"non-finite loss at step {i}: {m['loss']}")
    med = statistics.median(times[1:])
    stats = _memory_stats()
    out = {
        "init_s": round(init_s, 2),
        "compile_and_first_step_s": round(times[0], 2),
        "step_s": med,
        "step_s_all": [round(x, 4) for x in times[1:]],
        "tokens_per_s": rows * a.seq_len / med,
        "loss_last": float(m["loss"]),
        **_plan_vs_peak(planned, before_step, stats),
    }
    if "peak_bytes_in_use" in stats:
        out["peak_memory_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
    return out


class _Torch:
    """transformers + torch as its users train an RM: sdpa, bf16 autocast over fp32 params, gradient
    checkpointing, fused AdamW, global-norm clipping, MSE on the 5 scores."""

    def __init__(self, a: argparse.Namespace, lora: bool = False):
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForSequenceClassification

        self.torch = torch
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        spec = {k: v for k, v in (arch_8b if lora else arch)(a.smoke).items() if k != "rope_scaling"}  # same speed
        hf = LlamaConfig(
            num_labels=5, pad_token_id=0, problem_type="regression", attention_bias=False, mlp_bias=False, **spec
        )
        hf._attn_implementation = "sdpa"
        torch.manual_seed(a.seed)
        with self.dev:  # initialise on the device (a 1.2B model's CPU init takes many seconds)
            self.model = LlamaForSequenceClassification(hf).float().train()
        if lora:  # as a PEFT user: the base in bf16, adapters (fp32, peft's autocast_adapter_dtype) + score train
            from peft import LoraConfig, get_peft_model

            self.model = self.model.to(torch.bfloat16)
            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            lc = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, target_modules=targets, task_type="SEQ_CLS")
            self.model = get_peft_model(self.model, lc)
            for p in self.model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            self.model.train()
        ckpt = {"use_reentrant": False}
        if lora:
            self.model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input
        if hasattr(self.model, "activation_checkpointing_enable"):  # the newer transformers 5 name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt)
        else:  # transformers 5.17 (the GPU image)
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
        params = [p for p in self.model.parameters() if p.requires_grad]
        kw = dict(lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        try:
            self.opt, self.opt_kind = torch.optim.AdamW(params, fused=True, **kw), "AdamW(fused=True)"
        except (RuntimeError, TypeError):
            self.opt, self.opt_kind = torch.optim.AdamW(params, **kw), "AdamW (fused unavailable here)"
        self.params = params
        self.info = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": str(self.dev),
            "attn_implementation": getattr(self.model.config, "_attn_implementation", "?"),
            "optimizer": self.opt_kind,
            "autocast": "bfloat16",
            "gradient_checkpointing": True,
        }
        if lora:
            import peft

            self.info.update(peft=peft.__version__, lora_rank=a.lora_rank, base_dtype="bfloat16")
        if self.dev.type == "cuda":
            self.info["device_kind"] = torch.cuda.get_device_name(0)

    def step(self, ids: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> float:
        torch = self.torch
        ids_t = torch.from_numpy(ids.astype(np.int64)).to(self.dev)
        mask_t = torch.from_numpy(mask.astype(np.int64)).to(self.dev)
        lab = torch.from_numpy(labels.astype(np.float32)).to(self.dev)
        self._sync()
        t = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16):
            scores = self.model(input_ids=ids_t, attention_mask=mask_t).logits
        loss = ((scores.float() - lab) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        value = loss.item()  # waits for the step, as rm_jax's metrics fetch does
        dt = time.perf_counter() - t
        if not math.isfinite(value):
            raise RuntimeError("torch loss not finite")
        return dt

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def peak_memory(self) -> dict:
        if self.dev.type != "cuda":
            return {}
        return {"peak_memory_gib": round(self.torch.cuda.max_memory_allocated() / 2**30, 2)}


def section_torch_dense(a: argparse.Namespace) -> dict:
    """rows x seq_len full rows (one conversation each, no padding): the dense baseline."""
    return _torch_timed(a, _Torch(a), arch(a.smoke)["vocab_size"], "torch_dense")


def _torch_timed(a: argparse.Namespace, tt: Any, vocab: int, name: str) -> dict:
    """Median step of a torch trainer on rows x seq_len full random rows (no padding: every slot is real)."""
    rng = np.random.default_rng(a.seed)
    ids = rng.integers(3, vocab, (a.rows, a.seq_len)).astype(np.int32)
    labels = rng.integers(0, 5, (a.rows, 5)).astype(np.float32)
    times = [tt.step(ids, np.ones_like(ids), labels) for _ in range(a.warmup + a.steps)][a.warmup :]
    med = statistics.median(times)
    slots = a.rows * a.seq_len
    log(f"{name}: step {med * 1e3:.1f} ms, {slots / med:.0f} tok/s")
    return {
        **tt.info,
        **tt.peak_memory(),
        "rows": a.rows,
        "seq_len": a.seq_len,
        "step_s": med,
        "step_s_all": [round(x, 4) for x in times],
        "tokens_per_s": slots / med,
        "real_tokens_per_s": slots / med,
    }


def section_torch_peft(a: argparse.Namespace) -> dict:
    """transformers + peft LoRA (same rank and targets as rm_jax_lora) on the Llama-3.1-8B shape: rows x seq_len
    full rows, sdpa, bf16 autocast, gradient checkpointing."""
    return _torch_timed(a, _Torch(a, lora=True), arch_8b(a.smoke)["vocab_size"], "torch_peft")


def section_torch_trl(a: argparse.Namespace) -> dict:
    """TRL's RewardTrainer feeding: trl_batch conversations in order, right-padded to the batch's longest."""
    tt = _Torch(a)
    rng = np.random.default_rng(a.seed + 1)
    n_batches = a.warmup + a.steps
    convs = conversations(rng, n_batches * a.trl_batch, a.seq_len, arch(a.smoke)["vocab_size"])
    batches = []
    for i in range(n_batches):
        chunk = convs[i * a.trl_batch : (i + 1) * a.trl_batch]
        width = max(len(x) for x in chunk)
        ids = np.zeros((len(chunk), width), np.int32)
        mask = np.zeros_like(ids)
        for r, x in enumerate(chunk):
            ids[r, : len(x)], mask[r, : len(x)] = x, 1
        batches.append((ids, mask, rng.integers(0, 5, (len(chunk), 5)).astype(np.float32)))
    for b in batches[: a.warmup]:
        tt.step(*b)
    timed = batches[a.warmup :]
    total = sum(tt.step(*b) for b in timed)
    real = sum(int(m.sum()) for _, m, _ in timed)
    slots = sum(m.size for _, m, _ in timed)
    log(f"torch_trl: {real / total:.0f} real tok/s ({real / slots:.1%} of padded slots real)")
    return {
        **tt.info,
        **tt.peak_memory(),
        "conversations_per_batch": a.trl_batch,
        "batches_timed": len(timed),
        "seconds": total,
        "real_tokens": real,
        "padded_tokens": slots,
        "real_fraction": real / slots,
        "real_tokens_per_s": real / total,
        "tokens_per_s": slots / total,
    }


def _doc_mask_mod(seg: Any) -> Callable:
    """flex attention's mask_mod for packed rows: causal, and only within one conversation (``seg`` [rows, L]:
    rm_jax's segment ids; padding, id 0, attends only to padding, and no real token ever sees it)."""

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (q >= kv) & (seg[b, q] == seg[b, kv])

    return mask_mod


def _packed_attention_mask(seg: Any, impl: str) -> Any:
    """The per-document causal mask in the form ``impl`` takes it: a flex BlockMask (blocks with no pair of the
    same conversation are skipped), or for sdpa the dense [rows, 1, L, L] boolean of the same rule (O(L^2))."""
    import torch

    rows, n = seg.shape
    mask_mod = _doc_mask_mod(seg)
    if impl == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        # compiled, as transformers builds its masks: eager materialises the L x L mask on the way
        return torch.compile(create_block_mask)(mask_mod, B=rows, H=None, Q_LEN=n, KV_LEN=n, device=seg.device)
    ar = torch.arange(n, device=seg.device)
    b = torch.arange(rows, device=seg.device)[:, None, None]
    return mask_mod(b, None, ar[None, :, None], ar[None, None, :])[:, None]


def _set_attn(model: Any, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:  # an older transformers: every submodule shares this config
        model.config._attn_implementation = impl


class _TorchPacked(_Torch):
    """``_Torch``'s model, optimizer and precision fed rm_jax's packed rows the padding-free way: position ids that
    restart at 0 per conversation, a per-document causal mask handed to the attention as a 4D mask (transformers
    passes it through untouched), and the reward read at each conversation's last token -> ``score`` -> MSE, as
    rm_jax's loss does. (transformers' own padding-free path, position_ids with attention_mask=None as
    DataCollatorWithFlattening feeds it, builds an equivalent mask from the position ids.)"""

    def __init__(self, a: argparse.Namespace, impl: str):
        super().__init__(a)
        self.max_segments = a.max_segments
        self.use(impl)

    def use(self, impl: str) -> None:
        _set_attn(self.model, impl)
        self.impl = self.info["attn_implementation"] = impl

    def tensors(self, b: dict) -> dict:
        """One packed batch ([1, rows, L] from packed_batches) on the device, with the gather indices a collator
        would compute: (row, last token) of every conversation present."""
        from rm_jax.data.packing import last_token_index

        torch = self.torch
        seg = b["segment_ids"][0]
        last = last_token_index(seg, self.max_segments)
        rr, ss = np.nonzero(b["label_mask"][0].any(-1))
        t = lambda x, dt: torch.from_numpy(np.ascontiguousarray(x)).to(self.dev, dt)  # noqa: E731
        return {
            "ids": t(b["input_ids"][0], torch.long),
            "pos": t(b["positions"][0], torch.long),
            "seg": t(seg, torch.int32),
            "row": t(rr, torch.long),
            "tok": t(last[rr, ss], torch.long),
            "labels": t(b["labels"][0][rr, ss], torch.float32),
        }

    def scores(self, x: dict) -> Any:
        mask = _packed_attention_mask(x["seg"], self.impl)
        hidden = self.model.model(input_ids=x["ids"], attention_mask=mask, position_ids=x["pos"]).last_hidden_state
        return self.model.score(hidden[x["row"], x["tok"]])

    def step_packed(self, x: dict) -> float:
        torch = self.torch
        self._sync()
        t = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16):
            scores = self.scores(x)  # the mask is built inside the step, as transformers builds it in forward
        loss = ((scores.float() - x["labels"]) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        value = loss.item()
        dt = time.perf_counter() - t
        if not math.isfinite(value):
            raise RuntimeError("torch loss not finite")
        return dt


def check_batch(a: argparse.Namespace, vocab: int) -> dict:
    """Two packed rows of short conversations (3 to 6 a row, ragged ends, a padded tail) for
    check_packed_vs_alone: HelpSteer2-long ones would fill a smoke row alone and prove nothing."""
    from rm_jax.data.packing import build_batch

    rng = np.random.default_rng(a.seed + 2)
    n = a.seq_len
    lengths = [[n // 3, n // 4, n // 5 + 1], [n // 8, n // 6 + 3, n // 7, n // 9 + 1, n // 10, n // 11]]
    convs = [rng.integers(3, vocab, k).astype(np.int32) for row in lengths for k in row]
    bins, k = [], 0
    for row in lengths:
        bins.append(list(range(k, k + len(row))))
        k += len(row)
    labels = rng.integers(0, 5, (len(convs), 5)).astype(np.float32)
    b = build_batch(convs, labels, np.ones_like(labels), bins, n, a.max_segments, 0)
    b.pop("example_index")
    return {key: v[None] for key, v in b.items()}


def check_packed_vs_alone(tt: _TorchPacked, b: dict, impl: str, tol: float = 1e-4) -> float:
    """Max |score difference| between the packed forward under ``impl`` and the same model run on each
    conversation alone (sdpa, plain causal, positions 0..n-1), float32; AssertionError past ``tol``. Equal
    scores mean no conversation saw another: the document mask works."""
    torch = tt.torch
    x = tt.tensors(b)
    seg, ids = b["segment_ids"][0], b["input_ids"][0]
    was = tt.impl
    try:
        with torch.no_grad():
            tt.use(impl)
            packed = tt.scores(x).float()
            tt.use("sdpa")
            alone = []
            for r, s in zip(x["row"].tolist(), np.nonzero(b["label_mask"][0].any(-1))[1]):
                conv = torch.from_numpy(ids[r][seg[r] == s + 1].astype(np.int64)).to(tt.dev)[None]
                h = tt.model.model(input_ids=conv, position_ids=torch.arange(conv.shape[1], device=tt.dev)[None])
                alone.append(tt.model.score(h.last_hidden_state[0, -1]).float())
    finally:
        tt.use(was)
    diff = float((packed - torch.stack(alone)).abs().max())
    if not diff <= tol:
        raise AssertionError(f"torch_packed ({impl}): packed scores differ from each conversation alone by {diff:.3g}")
    return diff


def section_torch_packed(a: argparse.Namespace) -> dict:
    """The best a PyTorch user can do with transformers: rm_jax:auto's packed rows (same conversations, rows x
    seq_len, real tokens) with per-document attention, flex attention (compiled, a document BlockMask) as the
    headline, sdpa with the dense block-diagonal mask where flex cannot train (CPU: no flex backward) or fails."""
    import torch

    impl, reason = "flex_attention", None
    if not torch.cuda.is_available():
        impl, reason = "sdpa", f"flex attention has no backward on CPU (torch {torch.__version__})"
    tt = _TorchPacked(a, impl)
    batches, info = packed_batches(a, arch(a.smoke)["vocab_size"])
    xs = [tt.tensors(b) for b in batches]
    checks = {}
    if a.smoke:  # proves the document mask: each conversation's score as if it were alone
        for name in ("flex_attention", "sdpa"):  # flex forward runs on CPU too
            checks[name] = check_packed_vs_alone(tt, check_batch(a, arch(a.smoke)["vocab_size"]), name)
        log(f"torch_packed: packed scores = each conversation alone, max |diff| {checks}")
    times = []
    for i in range(a.warmup + a.steps):
        try:
            dt = tt.step_packed(xs[i % len(xs)])
        except Exception as e:
            if i > 0 or tt.impl == "sdpa":
                raise
            reason = f"flex_attention failed: {type(e).__name__}: {str(e)[:300]}"
            log(f"torch_packed: {reason}; sdpa with the dense document mask instead")
            tt.use("sdpa")
            dt = tt.step_packed(xs[0])
        if i == 0:
            log(f"torch_packed ({tt.impl}): compile + first step {dt:.1f} s")
        elif i >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    slots = a.rows * a.seq_len
    real = statistics.median(int((b["segment_ids"] > 0).sum()) for b in batches)
    log(f"torch_packed ({tt.impl}): step {med * 1e3:.1f} ms, {slots / med:.0f} tok/s")
    out = {
        **tt.info,
        **tt.peak_memory(),
        "mask": "causal within each conversation" + (" (flex BlockMask)" if tt.impl != "sdpa" else " (dense 4D bool)"),
        "rows": a.rows,
        "seq_len": a.seq_len,
        "step_s": med,
        "step_s_all": [round(x, 4) for x in times],
        "tokens_per_s": slots / med,
        "real_tokens_per_s": real / med,
        "fill": info["fill"],
    }
    if reason:
        out["attention_fallback"] = reason
    if checks:
        out["max_abs_diff_vs_alone"] = checks
    return out


def section_score_parity(a: argparse.Namespace) -> dict:
    """float32 scores of `rm-jax score`'s path on this device vs transformers float32 on the CPU."""
    import jax

    from rm_jax.engine.scoring import Scorer
    from rm_jax.models.hf_io import load_hf_reward_model
    from tests.helpers import make_hf_model, random_conversations, torch_scores

    out = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}
    convs = random_conversations(24, 5, 60, seed=a.seed)
    for family in ("llama", "qwen3"):
        with tempfile.TemporaryDirectory() as d:
            tm = make_hf_model(family, d)  # transformers, float32, on the CPU: the reference
            want = torch_scores(tm, convs)
            row = {}
            for label, precision in (("shipped", None), ("default_precision", "default")):
                lm = load_hf_reward_model(d, dtype="float32", matmul_precision=precision)
                got = Scorer(lm.cfg, lm.params).predict(convs, progress=False)
                row[f"max_abs_diff_{label}"] = float(np.abs(got - want).max())
                row[f"kernel_{label}"] = lm.cfg.attention_kernel()
                row[f"precision_{label}"] = lm.cfg.precision.name
            out[family] = row
            log(
                f"score_parity {family}: max|diff| {row['max_abs_diff_shipped']:.2e} "
                f"(with matmul_precision=default: {row['max_abs_diff_default_precision']:.2e})"
            )
    return out


# ---------------------------------------------------------------- scoring: rm-jax score's path vs transformers

SCORE_SHAPES = {"1b": arch, "8b": arch_8b}


def score_conversations(a: argparse.Namespace, shape: str, vocab: int) -> list[np.ndarray]:
    """HelpSteer2-shaped conversations to score (truncated to --seq-len): the same ids for both sides."""
    n = 16 if a.smoke else {"1b": 1024, "8b": 256}[shape]
    return conversations(np.random.default_rng(a.seed + 7), n, a.seq_len, vocab)


def _timed_passes(run: Callable[[], Any], sync: Callable[[], None], passes: int) -> tuple[float, list[float]]:
    """(warm-up seconds, timed pass seconds): the first call compiles; every pass ends synchronised."""
    t = time.perf_counter()
    run()
    sync()
    warm = time.perf_counter() - t
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    return warm, times


def section_score(a: argparse.Namespace, shape: str) -> dict:
    """``rm-jax score``'s forward path (``Scorer.predict``: packed rows of --seq-len, 16 rows a pass, attention
    auto) on the Llama-3.2-1B or 3.1-8B shape, bf16 and (1B) float32 compute, real tokens/s."""
    import dataclasses

    import jax

    from rm_jax.engine.scoring import Scorer
    from rm_jax.models import init_params
    from rm_jax.models.llama import DecoderConfig
    from rm_jax.models.sharding import make_mesh

    spec = SCORE_SHAPES[shape](a.smoke)
    convs = score_conversations(a, shape, spec["vocab_size"])
    real = sum(len(c) for c in convs)
    mesh = make_mesh(devices=jax.devices()[:1])
    base = DecoderConfig(model_type="llama", num_labels=5, dtype="bfloat16", attention="auto", **spec)
    params = init_params(base, mesh, a.seed)
    out: dict = {"shape": shape, "conversations": len(convs), "real_tokens": real, "seq_len": a.seq_len, "runs": {}}
    dtypes = ["bfloat16", "float32"] if shape == "1b" or a.smoke else ["bfloat16"]
    for dtype in dtypes:
        cfg = dataclasses.replace(base, dtype=dtype)
        scorer = Scorer(cfg, params, mesh)
        warm, times = _timed_passes(
            lambda: scorer.predict(convs, a.seq_len, a.score_rows, a.max_segments, progress=False),
            lambda: None,  # predict returns host numpy: already synchronised
            a.score_passes,
        )
        med = statistics.median(times)
        out["runs"][f"rm_jax_{dtype}"] = {
            "kernel": cfg.attention_kernel(),
            "warmup_s": round(warm, 2),
            "pass_s": med,
            "pass_s_all": [round(x, 4) for x in times],
            "real_tokens_per_s": real / med,
        }
        log(f"score:{shape} rm_jax {dtype} ({cfg.attention_kernel()}): {real / med:,.0f} real tok/s")
    return out


def section_torch_score(a: argparse.Namespace, shape: str) -> dict:
    """transformers ``*ForSequenceClassification`` on the same conversations under ``torch.no_grad``: bf16 with
    sdpa and (if installed) flash_attention_2, length-sorted batches of --torch-score-batch (minimal padding);
    bf16 padding-free packing (position ids restarting per conversation, attention_mask=None, as
    DataCollatorWithFlattening feeds it: flash_attention_2 only); float32 sdpa sorted on the 1B shape."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rm_jax.data.packing import plan_packed

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = SCORE_SHAPES[shape](a.smoke)
    convs = score_conversations(a, shape, spec["vocab_size"])
    real = sum(len(c) for c in convs)
    cfg = LlamaConfig(num_labels=5, pad_token_id=0, **spec)
    torch.manual_seed(a.seed)
    with torch.device(dev):
        model = LlamaForSequenceClassification(cfg).to(torch.bfloat16).eval()
    order = sorted(range(len(convs)), key=lambda j: len(convs[j]))

    def sorted_batches() -> list:
        out = []
        for i in range(0, len(order), a.torch_score_batch):
            chunk = [convs[j] for j in order[i : i + a.torch_score_batch]]
            width = max(len(c) for c in chunk)
            x = np.zeros((len(chunk), width), np.int64)
            m = np.zeros_like(x)
            for r, c in enumerate(chunk):
                x[r, : len(c)], m[r, : len(c)] = c, 1
            out.append((torch.from_numpy(x).to(dev), torch.from_numpy(m).to(dev)))
        return out

    def packed_rows() -> list:
        """rm_jax's packing plan, laid out flat: one row per plan row, ids, restarting positions, last tokens."""
        out = []
        for row in plan_packed([len(c) for c in convs], a.seq_len, a.max_segments):
            ids = np.concatenate([convs[j] for j in row])
            pos = np.concatenate([np.arange(len(convs[j])) for j in row])
            ends = np.cumsum([len(convs[j]) for j in row]) - 1
            t = lambda v: torch.from_numpy(np.asarray(v, np.int64)).to(dev)  # noqa: E731
            out.append((t(ids[None]), t(pos[None]), t(ends)))
        return out

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    out: dict = {"shape": shape, "conversations": len(convs), "real_tokens": real, "device": str(dev), "runs": {}}
    batches = sorted_batches()
    out["sorted_fill"] = real / sum(x.numel() for x, _ in batches)
    try:
        import flash_attn  # noqa: F401

        impls = ["sdpa", "flash_attention_2"]
    except ImportError:
        impls = ["sdpa"]
        out["flash_attention_2"] = "flash_attn is not installed: no flash_attention_2 and no padding-free run"
    runs = [(f"torch_bf16_{i}_sorted", i, torch.bfloat16, "sorted") for i in impls]
    if "flash_attention_2" in impls:
        runs.append(("torch_bf16_flash_attention_2_packed", "flash_attention_2", torch.bfloat16, "packed"))
    if shape == "1b" or a.smoke:
        runs.append(("torch_float32_sdpa_sorted", "sdpa", torch.float32, "sorted"))
    rows = packed_rows() if any(r[3] == "packed" for r in runs) else []
    for name, impl, dtype, feed in runs:
        try:
            model.to(dtype)
            _set_attn(model, impl)

            def run() -> None:
                with torch.no_grad():
                    if feed == "sorted":
                        for x, m in batches:
                            model(input_ids=x, attention_mask=m).logits.float().cpu()
                    else:
                        for ids, pos, ends in rows:
                            h = model.model(input_ids=ids, position_ids=pos).last_hidden_state
                            model.score(h[0, ends]).float().cpu()

            warm, times = _timed_passes(run, sync, a.score_passes)
        except Exception as e:  # an attention implementation this build cannot run: recorded, the rest go on
            out["runs"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            log(f"torch_score:{shape} {name}: FAILED {type(e).__name__}")
            continue
        med = statistics.median(times)
        out["runs"][name] = {
            "attn_implementation": impl,
            "feed": feed,
            "warmup_s": round(warm, 2),
            "pass_s": med,
            "pass_s_all": [round(x, 4) for x in times],
            "real_tokens_per_s": real / med,
        }
        log(f"torch_score:{shape} {name}: {real / med:,.0f} real tok/s")
    return out


def score_floors(s: dict) -> dict:
    """rm_jax's bf16 real tokens/s against the best bf16 transformers run, per scoring shape (floor 2x)."""
    out = {}
    for shape in SCORE_SHAPES:
        mine = s.get(f"score:{shape}", {}).get("runs", {}).get("rm_jax_bfloat16", {}).get("real_tokens_per_s")
        theirs = {
            k: v["real_tokens_per_s"]
            for k, v in s.get(f"torch_score:{shape}", {}).get("runs", {}).items()
            if k.startswith("torch_bf16") and "real_tokens_per_s" in v
        }
        best = max(theirs, key=theirs.get) if theirs else None
        value = mine / theirs[best] if mine and best else None
        out[f"score_{shape}_vs_best_torch"] = {**_floor(value, FLOORS["score_vs_best_torch"]), "best": best}
    return out


# ---------------------------------------------------------------- prefix sharing: shared vs unshared (issue 31)

# bench_share.py's shapes; floors from issue 31 item 6 (speed-up of shared over unshared, same run). "short" is
# the never-slower check: scoring's default (share="auto", which declines where it saves < 10%) >= 0.95x, the 5%
# a noisy pass may cost (bench_share.py's own allowance).
SHARE_SHAPES = ("helpsteer2", "rb2", "long_pairs", "groups8", "short")
SHARE_FLOORS = {
    "share_score_rb2": 1.6,
    "share_score_groups8": 2.5,
    "share_score_short_auto": 0.95,
    "share_train_long_pairs": 1.5,
    "share_train_helpsteer2": 1.15,
    "share_train_groups8": 2.5,
}
SHARE_LIMIT_S = 150


def share_argv(a: argparse.Namespace) -> list[str]:
    """bench_share.py's command line for the Llama-3.2-1B shape (smoke: the tiny one), bf16 compute with
    ``attention: auto`` on an accelerator (a shared batch runs the kernel that reads its layout), float32 in
    --smoke, remat and scan as the train sections."""
    from rm_jax.models.llama import DecoderConfig

    fields = {f for f in DecoderConfig.__dataclass_fields__}
    spec = {k: v for k, v in arch(a.smoke).items() if k in fields and k != "rope_scaling"}  # rope: no cost
    spec.update(max_position_embeddings=max(a.share_seq_len, 4096), attention="auto", remat=a.remat)
    spec.update(scan_layers=not a.no_scan, dtype=a.share_dtype or ("float32" if a.smoke else "bfloat16"))
    model = "+".join(f"{k}={_yaml_scalar(v)}" for k, v in spec.items())
    argv = ["--json", "--model", model, "--seq-len", str(a.share_seq_len), "--batch-rows", str(a.share_rows)]
    argv += ["--prompts", str(a.share_prompts or (2 if a.smoke else 64)), "--repeats", "1" if a.smoke else "3"]
    return argv + ["--seed", str(a.seed)]


def _yaml_scalar(v: Any) -> str:
    """``v`` as bench_common.parse_overrides reads it back (YAML 1.1: ``1e-05`` is a string, ``1.0e-05`` a float)."""
    if isinstance(v, bool):
        return str(v).lower()
    if not isinstance(v, float):
        return str(v)
    text = repr(v)
    return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text


def section_share(a: argparse.Namespace, what: str) -> dict:
    """bench_share.py run here, one call: ``score`` times all five shapes through Scorer.predict (share False,
    True and auto), ``train:SHAPE`` an epoch of train steps over one shape's examples, unshared and shared."""
    import contextlib
    import io

    import bench_share

    argv = share_argv(a)
    if what == "score":
        argv += ["--shapes", ",".join(SHARE_SHAPES)]
    else:  # "train" (every shape, one process: --smoke) or "train:SHAPE"
        shapes = what.split(":", 1)[1] if ":" in what else ",".join(SHARE_SHAPES)
        if "groups8" in shapes:  # a train step holds whole groups: 8 rows when each member takes one
            argv[argv.index("--batch-rows") + 1] = str(max(a.share_rows, 8))
        argv += ["--train", "--shapes", shapes, "--shared-steps", a.share_steps]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = bench_share.main(argv)  # its own CPU floors decide only its exit code, recorded, not used
    out = json.loads(buf.getvalue())
    out.pop("environment", None)
    return {"argv": argv, "bench_share_exit": code, **out}


def share_floors(s: dict) -> dict:
    """Issue 31's floors from the share sections (null where a section did not run)."""
    score = s.get("share:score", {}).get("shapes", {})

    def train(shape: str) -> Optional[float]:
        for name in (f"share:train:{shape}", "share:train"):
            if shape in s.get(name, {}).get("shapes", {}):
                return s[name]["shapes"][shape].get("speedup")
        return None

    values = {
        "share_score_rb2": score.get("rb2", {}).get("speedup"),
        "share_score_groups8": score.get("groups8", {}).get("speedup"),
        "share_score_short_auto": score.get("short", {}).get("auto_speedup"),
        "share_train_long_pairs": train("long_pairs"),
        "share_train_helpsteer2": train("helpsteer2"),
        "share_train_groups8": train("groups8"),
    }
    return {k: _floor(v, SHARE_FLOORS[k]) for k, v in values.items()}


def share_lines(sections: dict) -> list[str]:
    lines = []
    for name, r in sections.items():
        if not name.startswith("share:"):
            continue
        if "shapes" not in r:
            lines.append(f"{name}: {r.get('skipped') or r.get('error', '?')}"[:200])
            continue
        for shape, x in r["shapes"].items():
            if "tokens_shared" in x:
                lines.append(
                    f"{name} {shape}: tokens {x['tokens_unshared']} -> {x['tokens_shared']}, {x['speedup']:.2f}x "
                    f"(auto {x['auto_speedup']:.2f}x), max |diff| {x['max_abs_diff']:.1e}"
                )
            else:
                lines.append(
                    f"{name} {shape}: steps {x['steps_unshared']} -> {x['steps_shared']}, epoch "
                    f"{x['epoch_unshared_s']:.2f} -> {x['epoch_shared_s']:.2f} s, {x['speedup']:.2f}x"
                )
    return lines


class _EosFree:
    """The sampler's view of a tokenizer (end of turn, padding) for a random-id benchmark: an EOS id no token
    has, so every row runs the full --gen-new tokens, as transformers does with eos_token_id=None."""

    eos_token_id, pad_token_id = -1, 0
    # A chat template that writes nothing after a response: rm_jax.data.conversation.end_of_turn_ids then finds
    # no end-of-turn token and the sampler stops only at eos_token_id, which no token has.
    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

    def apply_chat_template(self, messages: list, **_: Any) -> str:
        return "".join(m["content"] for m in messages)

    def __call__(self, text: str, **_: Any) -> dict:
        return {"input_ids": []}


def section_generate(a: argparse.Namespace) -> dict:
    """Decoding: rm_jax's KV-cache sampler (``rm_jax.policy.generate_tokens``: prefill + a jitted while loop)
    against transformers ``generate`` (sdpa, bf16 weights, its default dynamic KV cache),
    both greedy on the same model shape with an LM head, gen_batch prompts of gen_prompt random tokens,
    exactly gen_new new tokens each (no EOS), bf16 compute. rm_jax keeps float32 parameters and decodes with
    a bf16 copy made once per call. Calls interleaved; medians of new tokens per second."""
    import jax
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from rm_jax.models import init_params
    from rm_jax.models.llama import DecoderConfig
    from rm_jax.models.sharding import make_mesh
    from rm_jax.policy import Policy, generate_tokens

    spec = arch(a.smoke)
    cfg = DecoderConfig(model_type="llama", head="lm", dtype="bfloat16", scan_layers=not a.no_scan, **spec)
    mesh = make_mesh(devices=jax.devices()[:1])
    policy = Policy(cfg, init_params(cfg, mesh, a.seed), _EosFree(), None, mesh)
    rng = np.random.default_rng(a.seed)
    prompts = [rng.integers(3, spec["vocab_size"], a.gen_prompt).astype(np.int32) for _ in range(a.gen_batch)]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hf = LlamaConfig(pad_token_id=0, attention_bias=False, mlp_bias=False, **spec)
    hf._attn_implementation = "sdpa"
    torch.manual_seed(a.seed)
    with dev:
        tm = LlamaForCausalLM(hf).to(torch.bfloat16).eval()
    ids = torch.as_tensor(np.stack(prompts).astype(np.int64), device=dev)
    mask = torch.ones_like(ids)

    def run_jax() -> float:
        t = time.perf_counter()
        out = generate_tokens(policy, prompts, greedy=True, max_new_tokens=a.gen_new, batch_size=a.gen_batch)
        assert all(len(x) == a.gen_new for per in out for x, _ in per)
        return time.perf_counter() - t

    def run_torch() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = tm.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=a.gen_new,
                min_new_tokens=a.gen_new,
                eos_token_id=None,
                pad_token_id=0,
            )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] == a.gen_prompt + a.gen_new
        return time.perf_counter() - t

    warm_j, warm_t = run_jax(), run_torch()
    log(f"generate: warm-up rm_jax {warm_j:.1f} s (compile included), torch {warm_t:.1f} s")
    jt, tt = [], []
    for _ in range(a.steps):
        jt.append(run_jax())
        tt.append(run_torch())
    new = a.gen_batch * a.gen_new
    out = {
        "batch": a.gen_batch,
        "prompt_tokens": a.gen_prompt,
        "new_tokens": a.gen_new,
        "greedy": True,
        "rm_jax_tokens_per_s": new / statistics.median(jt),
        "torch_tokens_per_s": new / statistics.median(tt),
        "rm_jax_call_s_all": [round(x, 3) for x in jt],
        "torch_call_s_all": [round(x, 3) for x in tt],
        "rm_jax_warmup_s": round(warm_j, 2),
        "kernel": "cached dense (decode), prefill likewise",
        "scan_layers": cfg.scan_layers,
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    out["ratio_vs_transformers_generate"] = out["rm_jax_tokens_per_s"] / out["torch_tokens_per_s"]
    log(
        f"generate: rm_jax {out['rm_jax_tokens_per_s']:.0f} tok/s, transformers {out['torch_tokens_per_s']:.0f} "
        f"tok/s ({out['ratio_vs_transformers_generate']:.2f}x)"
    )
    return out


# name -> (function, time limit in seconds on the GPU)
SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict], int]] = {
    "peak": (section_peak, 120),
    "torch_dense": (section_torch_dense, 180),
    "torch_packed": (section_torch_packed, 240),  # flex attention compiles on the first step
    "torch_trl": (section_torch_trl, 180),
    "score_parity": (section_score_parity, 180),
    "generate": (section_generate, 240),
    "torch_peft": (section_torch_peft, 300),  # not in DEFAULT_PLAN: --sections rm_jax_lora:auto,torch_peft
}
# The headline variant first; the slow xla variant last, where a time-out costs least.
DEFAULT_PLAN = [
    "peak",
    "rm_jax:auto",
    "torch_dense",
    "torch_packed",
    "torch_trl",
    "score_parity",
    "generate",
    "rm_jax:cudnn_dense",
    "rm_jax:xla",
]
RM_JAX_LIMIT_S = 240
FULL_FT_LIMIT_S = 300  # aim ~150 s on an H200: one or two plan compiles (~60 s at 8B) and the run's own compile
# Named groups for --sections (not in the default plan; one 10-minute call each):
PLAN_GROUPS = {
    "memory": ["rm_jax:auto", "rm_jax_lora:auto"],  # the plan_within_15pct floor
    # The three floors of the big-RM work in one call (under 10 minutes on an H100/H200): plan within 15% of the
    # peak, auto >= 1.3x the packed PyTorch baseline, 8B LoRA >= 1.5x transformers + peft.
    "big_rm": ["rm_jax:auto", "torch_packed", "rm_jax_lora:auto", "torch_peft"],
    "full_ft": [f"full_ft:{k}" for k in FT_OPTIONS],  # the largest full fine-tune per memory option
    # rm-jax score's path against transformers' best scoring loop, 1B and 8B shapes: floor score_vs_best_torch
    "score": ["score:1b", "torch_score:1b", "score:8b", "torch_score:8b"],
    # prefix sharing, shared vs unshared (issue 31's floors): scoring on five shapes, then an epoch of training
    # per shape, the floored ones first
    "share": ["share:score"] + [f"share:train:{k}" for k in ("long_pairs", "helpsteer2", "groups8", "rb2", "short")],
}
SCORE_LIMIT_S = 150


def run_section(name: str, a: argparse.Namespace) -> dict:
    if name.startswith("share:"):
        return section_share(a, name.split(":", 1)[1])
    if name.startswith("score:"):
        return section_score(a, name.split(":", 1)[1])
    if name.startswith("torch_score:"):
        return section_torch_score(a, name.split(":", 1)[1])
    if name.startswith("rm_jax:"):
        return section_rm_jax(a, name.split(":", 1)[1])
    if name.startswith("rm_jax_lora:"):
        return section_rm_jax(a, name.split(":", 1)[1], lora=True)
    if name.startswith("full_ft:"):
        return section_full_ft(a, name.split(":", 1)[1])
    return SECTIONS[name][0](a)


# ---------------------------------------------------------------- the parent: plan, subprocesses, ratios

FLOORS = {
    "auto_vs_torch_dense": 1.6,
    "auto_vs_torch_packed": 1.3,
    "auto_real_tokens_vs_trl_padded": 5.0,
    "auto_mfu": 0.65,
    "score_max_abs_diff": 1e-4,
    "lora_vs_torch_peft": 1.5,
    "plan_within_15pct": 0.15,  # |plan / measured peak - 1|, rm_jax:auto and the LoRA section
    "score_vs_best_torch": 2.0,  # rm-jax score's path, bf16, real tokens/s over the best transformers loop
}


def derive(res: dict) -> None:
    """Ratios and floors from the sections' raw numbers (in place)."""
    from bench_common import matmul_peaks, mfu_figures, plan_within

    s = res["sections"]
    p = s.get("peak", {})
    peaks = res["peaks"] = matmul_peaks(p.get("best_flops"), p.get("torch_best_flops"), p.get("device_kind", ""))
    dense = s.get("torch_dense", {}).get("tokens_per_s")
    trl = s.get("torch_trl", {}).get("real_tokens_per_s")
    packed = s.get("torch_packed", {}).get("real_tokens_per_s")  # the same rows as rm_jax's: same real tokens
    fpt = None
    for name, r in s.items():
        if name.startswith("rm_jax:") and "tokens_per_s" in r:
            fpt = r["flops_per_token"]
            r.update(mfu_figures(r["tokens_per_s"], r["flops_per_token"], peaks))
            if dense:
                r["ratio_vs_torch_dense"] = r["tokens_per_s"] / dense
            if trl:
                r["ratio_real_tokens_vs_trl_padded"] = r["real_tokens_per_s"] / trl
            if packed:
                r["ratio_vs_torch_packed"] = r["real_tokens_per_s"] / packed
    if dense and fpt:  # same model, same formula, same peaks
        s["torch_dense"].update(mfu_figures(dense, fpt, peaks))
    if packed and fpt:
        s["torch_packed"].update(mfu_figures(s["torch_packed"]["tokens_per_s"], fpt, peaks))
    auto = s.get("rm_jax:auto", {})
    parity = [v.get("max_abs_diff_shipped") for k, v in s.get("score_parity", {}).items() if isinstance(v, dict)]
    xla = s.get("rm_jax:xla", {})
    lora_runs = [k for k in s if k.startswith("rm_jax_lora:") and "tokens_per_s" in s[k]]
    lora_key = min(lora_runs, key=lambda k: k != "rm_jax_lora:auto") if lora_runs else None
    lora = s[lora_key] if lora_key else {}
    peft_r = s.get("torch_peft", {})
    if lora.get("tokens_per_s") and peft_r.get("tokens_per_s"):
        lora["ratio_vs_torch_peft"] = lora["tokens_per_s"] / peft_r["tokens_per_s"]
    res["floors"] = {
        "auto_vs_torch_dense": _floor(auto.get("ratio_vs_torch_dense"), FLOORS["auto_vs_torch_dense"]),
        "auto_vs_torch_packed": _floor(auto.get("ratio_vs_torch_packed"), FLOORS["auto_vs_torch_packed"]),
        "auto_real_tokens_vs_trl_padded": _floor(
            auto.get("ratio_real_tokens_vs_trl_padded"), FLOORS["auto_real_tokens_vs_trl_padded"]
        ),
        "auto_mfu": _floor(auto.get("mfu"), FLOORS["auto_mfu"]),
        "lora_vs_torch_peft": _floor(lora.get("ratio_vs_torch_peft"), FLOORS["lora_vs_torch_peft"]),
        "plan_within_15pct": plan_within(
            {k: s[k].get("plan_vs_peak") for k in ("rm_jax:auto", lora_key) if k in s},
            FLOORS["plan_within_15pct"],
        ),
        **score_floors(s),
        **share_floors(s),
        "xla_fits": {"value": "step_s" in xla, "met": "step_s" in xla} if xla else {"value": None, "met": None},
        "score_max_abs_diff": (
            {
                "value": max(parity),
                "floor": FLOORS["score_max_abs_diff"],
                "met": max(parity) <= FLOORS["score_max_abs_diff"],
            }
            if parity and None not in parity
            else {"value": None, "met": None}
        ),
    }


def _floor(value: Optional[float], floor: float) -> dict:
    return {"value": value, "floor": floor, "met": None if value is None else value >= floor}


def table(res: dict) -> str:
    lines = [
        "| section | kernel | step | tok/s | real tok/s | MFU | MFU spec | x torch dense | x torch packed "
        "| x TRL padded | peak mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["sections"].items():
        if name in ("peak", "score_parity", "generate") or name.startswith(
            ("full_ft:", "score:", "torch_score:", "share:")
        ):
            continue
        if "step_s" not in r and "seconds" not in r:
            why = r.get("skipped") or r.get("error", "?")
            lines.append(f"| {name} | - | {why[:70]} | | | | | | | | |")
            continue
        f = lambda k, fmt: "" if r.get(k) is None else format(r[k], fmt)  # noqa: E731
        step = f"{r['step_s'] * 1e3:.0f} ms" if "step_s" in r else f"{r['seconds']:.2f} s total"
        lines.append(
            f"| {name} | {r.get('kernel', r.get('attn_implementation', ''))} | {step} | "
            f"{f('tokens_per_s', ',.0f')} | {f('real_tokens_per_s', ',.0f')} | "
            f"{f('mfu', '.1%')} | {f('mfu_spec', '.1%')} | "
            f"{f('ratio_vs_torch_dense', '.2f')} | {f('ratio_vs_torch_packed', '.2f')} | "
            f"{f('ratio_real_tokens_vs_trl_padded', '.2f')} | "
            f"{f('peak_memory_gib', '.1f')} |"
        )
    peak = res["sections"].get("peak", {})
    if "best_flops" in peak:
        torch_rate = (
            f"{peak['torch_best_flops'] / 1e12:.1f}" if "torch_best_flops" in peak else peak.get("torch_error", "-")
        )
        peaks = res.get("peaks", {})
        spec = f"{peaks['spec_flops'] / 1e12:.0f}" if peaks.get("spec_flops") else "none"
        lines.append(
            f"peak bf16 {peak['n']}^3 ({peak['device_kind']}): jnp.dot {peak['best_flops'] / 1e12:.1f}, torch.matmul "
            f"{torch_rate} TFLOP/s; MFU divides by {peaks.get('measured_by')}; spec {spec} ({peaks.get('spec_note')})"
        )
    gen = res["sections"].get("generate", {})
    if "ratio_vs_transformers_generate" in gen:
        lines.append(
            f"generate (batch {gen['batch']}, {gen['prompt_tokens']} + {gen['new_tokens']} tokens, greedy, bf16): "
            f"rm_jax {gen['rm_jax_tokens_per_s']:,.0f} tok/s, transformers {gen['torch_tokens_per_s']:,.0f} "
            f"tok/s = {gen['ratio_vs_transformers_generate']:.2f}x"
        )
    elif gen:
        lines.append(f"generate: {gen.get('skipped') or gen.get('error', '?')}"[:200])
    for fam, r in res["sections"].get("score_parity", {}).items():
        if isinstance(r, dict):
            lines.append(
                f"score parity {fam}: {r['max_abs_diff_shipped']:.2e} "
                f"(matmul_precision=default: {r['max_abs_diff_default_precision']:.2e})"
            )
    lines += memory_lines(res["sections"])
    lines += share_lines(res["sections"])
    for k, v in res.get("floors", {}).items():
        lines.append(f"floor {k}: {v}")
    return "\n".join(lines)


def memory_lines(sections: dict) -> list[str]:
    """Plan against measured peak per rm_jax section, and each full_ft section's ladder and confirming run."""
    gib = lambda b: "-" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
    lines = []
    for name, r in sections.items():
        if name.startswith(("rm_jax:", "rm_jax_lora:")) and ("plan_total_bytes" in r or "plan_error" in r):
            ratio = r.get("plan_vs_peak")
            lines.append(
                f"plan vs peak {name}: plan {gib(r.get('plan_total_bytes'))} / peak {gib(r.get('peak_bytes'))} = "
                + (f"{ratio:.3f}" if ratio is not None else r.get("plan_error") or r.get("peak_note", "-"))
            )
    for name, r in sections.items():
        if not name.startswith("full_ft:"):
            continue
        if "ladder" not in r:
            lines.append(f"{name}: {r.get('skipped') or r.get('error', '?')}"[:200])
            continue
        rungs = ", ".join(
            f"{x['name']} "
            + (f"plan {gib(x['plan_total_bytes'])}" if x["compiled"] else f"state {gib(x['lower_bound_bytes'])}")
            + (" fits" if x["fits"] else "")
            for x in r["ladder"]
        )
        card = gib(r["card_bytes"]) + (" pretend" if r.get("card_from", "").startswith("pretend") else "")
        head = f"{name} (card {card}, remat {r['remat']}, 1 x {r['seq_len']}): {rungs}"
        if "model" not in r:
            lines.append(f"{head}; none fits")
        elif "run_error" in r:
            lines.append(f"{head}; run of {r['model']} FAILED: {r['run_error'][:100]}")
        else:
            ratio = r.get("plan_vs_peak")
            lines.append(
                f"{head}; ran {r['model']}: {r['tokens_per_s']:,.0f} tok/s, peak {gib(r.get('peak_bytes'))}"
                + (f", plan/peak {ratio:.3f}" if ratio is not None else f" ({r.get('peak_note', '')})")
            )
    return lines


def parent(a: argparse.Namespace, argv: list) -> int:
    plan = [s.strip() for s in a.sections.split(",")] if a.sections else list(DEFAULT_PLAN)
    # --smoke trains every share shape in one process (process start-up is most of a tiny section's time)
    groups = {**PLAN_GROUPS, "share": ["share:score", "share:train"]} if a.smoke else PLAN_GROUPS
    plan = [x for s in plan for x in groups.get(s, [s])]
    if a.attention:
        plan = [s for s in plan if not s.startswith("rm_jax:")]
        plan += [f"rm_jax:{k.strip()}" for k in a.attention.split(",") if k.strip()]
    deadline = T0 + a.budget_s
    res: dict = {
        "benchmark": "gpu_train_step_vs_transformers",
        "smoke": a.smoke,
        "plan": plan,
        "settings": {
            "rows": a.rows,
            "seq_len": a.seq_len,
            "max_segments": a.max_segments,
            "steps": a.steps,
            "warmup": a.warmup,
            "remat": a.remat,
            "scan_layers": not a.no_scan,
            "trl_batch": a.trl_batch,
            "model": "tiny (smoke)" if a.smoke else "Llama-3.2-1B",
            "dtype": "bfloat16 compute, float32 params + AdamW",
        },
        "flop_formula": "rm_jax.core.flops.flops_per_token: 6 x non-embedding params + 12 x layers x heads x "
        "head_dim x seq_len / 2, per token slot (padding included); mfu = tokens/s x that / the higher of "
        "the peak section's jnp.dot and torch.matmul rates, mfu_spec = the same / the card's data-sheet dense "
        "bf16 peak (bench_common.SPEC_BF16_FLOPS), for rm_jax and torch alike",
        "sections": {},
    }
    for name in plan:
        if name.startswith("full_ft:"):
            limit = FULL_FT_LIMIT_S
        elif name.startswith(("score:", "torch_score:")):
            limit = SCORE_LIMIT_S
        elif name.startswith("share:"):
            limit = SHARE_LIMIT_S
        else:
            limit = RM_JAX_LIMIT_S if name.startswith(("rm_jax:", "rm_jax_lora:")) else SECTIONS[name][1]
        left = deadline - time.perf_counter()
        if left < 30:
            res["sections"][name] = {"skipped": f"time budget ({a.budget_s} s) used up"}
            log(f"{name}: skipped, {left:.0f} s left of the budget")
            continue
        res["sections"][name] = _child(name, argv, min(limit, left) if not a.smoke else left)
    derive(res)
    res["wall_s"] = round(time.perf_counter() - T0, 1)
    text = json.dumps(res, default=float)
    print(text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "bench_gpu.json"), "w") as f:
            f.write(text + "\n")
    print(table(res), file=sys.stderr, flush=True)
    ok = any("step_s" in r for k, r in res["sections"].items() if k.startswith(("rm_jax:", "rm_jax_lora:", "full_ft:")))
    ok = ok or any(
        "real_tokens_per_s" in run
        for k, r in res["sections"].items()
        if k.startswith("score:")
        for run in r.get("runs", {}).values()
    )
    ok = ok or any("shapes" in r for k, r in res["sections"].items() if k.startswith("share:"))
    return 0 if ok else 1


def _child(name: str, argv: list, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--section", name]
    log(f"{name}: running (limit {timeout:.0f} s)")
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"{name}: TIMED OUT after {timeout:.0f} s")
        return {"error": f"timed out after {timeout:.0f} s"}
    last = (p.stdout.strip().splitlines() or [""])[-1]
    try:
        return json.loads(last)
    except json.JSONDecodeError:
        return {"error": f"exit {p.returncode}, no JSON result", "stdout_tail": p.stdout[-2000:]}


def child(a: argparse.Namespace) -> int:
    try:
        r = run_section(a.section, a)
    except Exception as e:  # out of memory, unsupported cuDNN config, ...: report it, the parent goes on
        r = {"error": f"{type(e).__name__}: {str(e)[:2000]}", "traceback_tail": traceback.format_exc()[-3000:]}
        log(f"{a.section}: FAILED {type(e).__name__}: {str(e)[:300]}")
    print(json.dumps(r, default=float))
    return 0


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, runs on CPU")
    ap.add_argument("--json", action="store_true", help="(always JSON; kept for symmetry with the other benches)")
    ap.add_argument("--seq-len", type=int, default=None, help="default 4096 (smoke 256)")
    ap.add_argument(
        "--rows", type=int, default=None, help="packed rows per step and dense torch rows (default 4, smoke 2)"
    )
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--lora-rank", type=int, default=16, help="rm_jax_lora:* and torch_peft sections")
    ap.add_argument(
        "--no-plan-memory",
        dest="plan_memory",
        action="store_false",
        help="rm_jax sections: skip `rm-jax plan`'s compile (plan_total_bytes, plan_vs_peak)",
    )
    ap.add_argument("--card-memory", default=None, help="full_ft: bytes per device (default bytes_limit; e.g. 141GB)")
    ap.add_argument("--ft-remat", default="full", choices=["none", "full", "dots", "dots_no_batch"])
    ap.add_argument("--ft-steps", type=int, default=3, help="full_ft: steps of the confirming run (the first compiles)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per section (default 6, smoke 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps, the first compiles")
    ap.add_argument("--trl-batch", type=int, default=16, help="conversations per TRL-style padded batch")
    ap.add_argument("--attention", default=None, help="rm_jax kernels to time, in order (default auto,cudnn_dense,xla)")
    ap.add_argument(
        "--sections",
        default=None,
        help=f"comma list (default {','.join(DEFAULT_PLAN)}; groups: {', '.join(PLAN_GROUPS)})",
    )
    ap.add_argument("--remat", default="dots_no_batch", choices=["none", "full", "dots", "dots_no_batch"])
    ap.add_argument("--no-scan", action="store_true", help="unrolled layers (slower compile) instead of scanned")
    ap.add_argument("--peak-n", type=int, default=8192)
    ap.add_argument("--gen-batch", type=int, default=8, help="generate section: prompts decoded together")
    ap.add_argument(
        "--gen-prompt", type=int, default=None, help="generate section: prompt tokens (default 256, smoke 16)"
    )
    ap.add_argument("--gen-new", type=int, default=None, help="generate section: new tokens (default 128, smoke 8)")
    ap.add_argument("--score-rows", type=int, default=16, help="score sections: rm_jax packed rows per pass")
    ap.add_argument("--torch-score-batch", type=int, default=16, help="torch_score: conversations per sorted batch")
    ap.add_argument("--score-passes", type=int, default=3, help="score sections: timed passes after the warm-up")
    ap.add_argument("--share-seq-len", type=int, default=2048, help="share sections: packed row length")
    ap.add_argument("--share-rows", type=int, default=4, help="share sections: rows per pass / train step")
    ap.add_argument(
        "--share-steps",
        choices=["fill", "same"],
        default="fill",
        help="share train sections: data.shared_steps (fill: rows filled shared, the speed mode the floors name)",
    )
    ap.add_argument("--share-prompts", type=int, default=None, help="share sections: prompts per shape (64, smoke 2)")
    ap.add_argument("--share-dtype", default=None, help="share sections: compute dtype (bfloat16, smoke float32)")
    ap.add_argument("--budget-s", type=float, default=560, help="whole-run budget; sections past it are skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)  # internal: run one section here
    a = ap.parse_args(argv)
    a.seq_len = a.seq_len or (256 if a.smoke else 4096)
    a.rows = a.rows or (2 if a.smoke else 4)
    a.steps = a.steps or (2 if a.smoke else 6)
    a.gen_prompt = a.gen_prompt or (16 if a.smoke else 256)
    a.gen_new = a.gen_new or (8 if a.smoke else 128)
    if a.section:
        return child(a)
    return parent(a, argv)


if __name__ == "__main__":
    sys.exit(main())
