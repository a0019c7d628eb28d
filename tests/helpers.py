"""Shared test helpers: tiny random HF models of each supported family (written with transformers + torch,
test-only), and launching runs in subprocesses (own jax device count, no inherited XLA_FLAGS)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")
WORKER = os.path.join(ROOT, "tests", "integration", "run_worker.py")


def worker_env() -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own CPU device count
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def compile_cache_env(cache_dir: str) -> dict:
    """Environment for a subprocess to share a persistent compilation cache: the first run compiles, the
    runs after it load the same programs (short test runs spend their time starting up and compiling)."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


FAMILIES = {
    # Llama 3.1-style: llama3 rope scaling, explicit head_dim != hidden/heads, GQA.
    "llama": dict(
        model_type="llama",
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=1024,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    # Mistral: one kv head, a sliding window smaller than the test sequences.
    "mistral": dict(
        model_type="mistral",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=7,
        rope_theta=10000.0,
        max_position_embeddings=1024,
    ),
    # Qwen2: q/k/v bias, linear rope scaling.
    "qwen2": dict(
        model_type="qwen2",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=1000000.0,
        max_position_embeddings=1024,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    # Qwen3: q/k RMSNorm, explicit head_dim.
    "qwen3": dict(
        model_type="qwen3",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=1000000.0,
        max_position_embeddings=1024,
    ),
}

VOCAB = 97
PAD = 0


def make_hf_model(
    family: str,
    out_dir: str,
    kind: str = "seqcls",
    num_labels: int = 5,
    seed: int = 0,
    max_shard_size: str | None = None,
    tied: bool = False,
):
    """Save a random tiny model; returns the torch model (eval mode, float32)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=VOCAB,
        pad_token_id=PAD,
        num_labels=num_labels,
        tie_word_embeddings=tied,
        attn_implementation="eager",
        **spec,
    )
    if num_labels == 5:
        from rm_jax.core.attributes import ATTRIBUTES

        cfg.id2label = dict(enumerate(ATTRIBUTES))
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    torch.manual_seed(seed)
    cls = AutoModelForSequenceClassification if kind == "seqcls" else AutoModelForCausalLM
    model = cls.from_config(cfg).float().eval()
    with torch.no_grad():  # perturb norms and biases so a dropped parameter shows in the outputs
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
            if name.endswith("score.weight"):
                p.normal_(0, 0.5)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kw)
    return model


def torch_scores(model, ids_list: list[np.ndarray]) -> np.ndarray:
    """Reference: each conversation alone through transformers -> [N, num_labels]."""
    import torch

    out = []
    with torch.no_grad():
        for ids in ids_list:
            t = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
            out.append(model(input_ids=t).logits[0].numpy())
    return np.stack(out)


def torch_batch_scores(model, ids_list: list[np.ndarray], side: str) -> np.ndarray:
    """Reference: one padded batch through transformers, with position ids from the mask."""
    import torch

    n, t = len(ids_list), max(len(x) for x in ids_list)
    ids = np.full((n, t), PAD, np.int64)
    mask = np.zeros((n, t), np.int64)
    for i, x in enumerate(ids_list):
        sl = slice(t - len(x), t) if side == "left" else slice(0, len(x))
        ids[i, sl], mask[i, sl] = x, 1
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    with torch.no_grad():
        return model(
            input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), position_ids=torch.as_tensor(pos)
        ).logits.numpy()


def random_conversations(n: int, lo: int, hi: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=rng.integers(lo, hi + 1)).astype(np.int32) for _ in range(n)]


def bundled_tokenizer():
    from transformers import AutoTokenizer

    from rm_jax.data.pipeline import bundled_tokenizer_path

    return AutoTokenizer.from_pretrained(bundled_tokenizer_path())


def make_hf_rm_with_tokenizer(family: str, out_dir: str, seed: int = 0, max_shard_size: str | None = None):
    """A tiny random ``*ForSequenceClassification`` folder with the bundled tokenizer (vocab 1000)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rm_jax.core.attributes import ATTRIBUTES

    tok = bundled_tokenizer()
    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        num_labels=5,
        tie_word_embeddings=False,
        attn_implementation="eager",
        **spec,
    )
    if "sliding_window" in spec:
        cfg.sliding_window = 4096  # chat-templated rows are longer than the parity tests' window
    cfg.id2label = dict(enumerate(ATTRIBUTES))
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg).float().eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 0.5)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kw)
    tok.save_pretrained(out_dir)
    return model, tok


def make_hf_causal_lm_with_tokenizer(family: str, out_dir: str, seed: int = 0, tied: bool = False):
    """A tiny random ``*ForCausalLM`` folder with the bundled tokenizer and its chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = bundled_tokenizer()
    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=tied,
        attn_implementation="eager",
        **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # larger logits than the default init, so sampling and argmax are not near-uniform
        model.get_output_embeddings().weight.normal_(0, 0.3)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return model, tok


# ---- experiment-file fixtures shared by the sweep tests


def tiny_base(data_files, steps=4, every=2):
    return {
        "model": {
            "arch": {
                "model_type": "llama",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "max_position_embeddings": 256,
            }
        },
        "data": {
            "train": data_files["train"],
            "validation": data_files["validation"],
            "seq_len": 128,
            "max_segments": 8,
        },
        "train": {
            "max_steps": steps,
            "batch_rows": 4,
            "lr": 3.0e-3,
            "warmup_steps": 1,
            "log_every": 5,
            "eval_every": every,
            "eval_rows": 8,
        },
        "checkpoint": {"every_steps": every},
        "mesh": {"num_devices": 1},
        "logging": {"progress": False, "tensorboard": False},
    }


def fake_train(cfg):
    """What train() leaves in a run folder, with predictions that improve with the data fraction."""
    from rm_jax.core.config import dump_yaml
    from rm_jax.data.pipeline import resolve_source
    from rm_jax.data.sources import load_helpsteer, pair_ids

    rd = cfg.run_dir
    os.makedirs(os.path.join(rd, "predictions"), exist_ok=True)
    dump_yaml(cfg, os.path.join(rd, "config.yaml"))
    rows = load_helpsteer(resolve_source(cfg.data.validation), "validation").rows
    groups = pair_ids(rows)
    rng = np.random.default_rng(cfg.train.seed)
    attrs = cfg.model.attributes
    with open(os.path.join(rd, "predictions", "validation.jsonl"), "w") as f:
        for i, (r, g) in enumerate(zip(rows, groups)):
            pred = {a: float(r[a] + rng.normal() * (1.2 - cfg.data.fraction)) for a in attrs}
            f.write(json.dumps({"row": i, "group": g, "pred": pred, "label": {a: r[a] for a in attrs}}) + "\n")
    with open(os.path.join(rd, "eval.json"), "w") as f:
        json.dump(
            {"val_loss": 1.5 - cfg.data.fraction + cfg.train.seed * 0.01, "train_rows": int(100 * cfg.data.fraction)}, f
        )
    Path(rd, "DONE").write_text("{}\n")
    return rd


def rm_jax_sources() -> dict[str, str]:
    """Path relative to rm_jax/ -> source text, for every module of the package (tests that read the code)."""
    root = os.path.join(ROOT, "rm_jax")
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    out[os.path.relpath(path, root)] = fh.read()
    return out


# ---------------------------------------------------------------- backend assumptions (docs/testing.md, "GPU")
# A test that holds only on some backend says so with one of these marks and is skipped elsewhere with the
# reason, instead of failing there. Numeric tolerances are not backend marks: they are argued in the test
# from the precision that runs (float32 2^-24, TF32 2^-11, bfloat16 2^-8).


def jax_backend() -> str:
    import jax

    return jax.default_backend()


def requires_cpu(why: str):
    """Skip unless jax runs on the CPU: the test's subject is the CPU backend itself (e.g. a GPU-only
    kernel refused there)."""
    import pytest

    b = jax_backend()
    return pytest.mark.skipif(b != "cpu", reason=f"assumes the CPU backend ({why}); this run's backend is {b}")


def requires_gpu(what: str):
    """Skip unless jax runs on a GPU: the subject only exists there (cuDNN kernels)."""
    import pytest

    b = jax_backend()
    return pytest.mark.skipif(b != "gpu", reason=f"needs a GPU ({what}); this run's backend is {b}")


def requires_devices(n: int):
    """Skip unless jax has ``n`` devices: meshes of several devices. On the CPU tests/conftest.py fakes 8
    (XLA_FLAGS --xla_force_host_platform_device_count); a one-GPU machine has 1."""
    import jax
    import pytest

    have = jax.device_count()
    return pytest.mark.skipif(
        have < n, reason=f"needs {n} devices for its mesh; the {jax_backend()} backend here has {have}"
    )


# ---- chat templates that write text after their end-of-turn token (response-end tests)

END_TEMPLATE = (  # Phi-style: the turn ends with <|end|> (the tokenizer's EOS), then a newline
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHATML_TEMPLATE = (  # Qwen's: the turn ends with <|im_end|>, then a newline; the EOS stays </s>
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_hf_causal_lm_with_template(
    family: str, out_dir: str, template: str, special: list[str], eos: str | None = None, seed: int = 0
):
    """A tiny random ``*ForCausalLM`` folder with the bundled tokenizer plus ``special`` tokens, ``template`` as
    its chat template and (optionally) ``eos`` as its EOS: (model, tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = bundled_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": list(special)})
    if eos is not None:
        tok.eos_token = eos
    tok.chat_template = template
    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        attn_implementation="eager",
        **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0, 0.3)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return model, tok


def make_hf_causal_lm_that_ends_turns(
    out_dir: str, seed: int = 1, prompts: list | None = None, byte_tokens: bool = False
):
    """A tiny random llama with the ``<|end|>`` template (its turn ends with the EOS ``<|end|>``, so re-encoding
    a sample gives back the tokens the policy emitted) that ends its turn within a few tokens when sampled at
    temperature 0.5 (a random model almost never emits EOS), and whose samples' text re-encodes to the sampled
    tokens (no partial UTF-8 byte tokens): the EOS row of its LM head points along the mean
    final hidden state of its own samples for ``prompts`` (conversations ending with the user's turn), scaled to
    3/4 of a typical top logit. ``byte_tokens``: keep the partial UTF-8 byte tokens (their logits untouched), so
    samples can stop inside a multi-byte character and their text not re-encode. (model, tokenizer)."""
    import torch

    from rm_jax.data.conversation import encode_prompts
    from rm_jax.policy import generate, load_policy

    model, tok = make_hf_causal_lm_with_template(
        "llama", out_dir, END_TEMPLATE, ["<|end|>", "<|user|>", "<|assistant|>"], eos="<|end|>", seed=seed
    )
    with torch.no_grad():  # no partial UTF-8 byte tokens: their text does not re-encode to the sampled tokens
        head = model.get_output_embeddings().weight
        for i in range(len(tok)):
            if "\ufffd" in tok.decode([i]) and not byte_tokens:
                head[i] = 0.0  # logit 0, far below the nucleus at temperature 0.5
    model.save_pretrained(out_dir, safe_serialization=True)
    prompts = prompts or [
        [{"role": "user", "content": "Name a colour."}],
        [{"role": "user", "content": "What is 2 plus 2?"}],
    ]
    gen = generate(load_policy(out_dir), prompts, n=4, temperature=0.5, top_p=0.8, max_new_tokens=16, seed=7,
                   return_tokens=True)  # fmt: skip
    hidden, top = [], []
    with torch.no_grad():
        for p, toks in zip(encode_prompts(tok, prompts), gen.tokens):
            for t in toks:
                out = model(torch.as_tensor(np.concatenate([p, t])[None].astype(np.int64)), output_hidden_states=True)
                hidden.append(out.hidden_states[-1][0, len(p) :])
                top.append(out.logits[0, len(p) :].max(-1).values)
        h, mx = torch.cat(hidden), torch.cat(top)
        u = h.mean(0) / h.mean(0).norm()
        proj = h @ u
        scale = torch.median(mx[proj > 0] / proj[proj > 0])
        model.get_output_embeddings().weight[tok.eos_token_id] = u * scale * 0.75
    model.save_pretrained(out_dir, safe_serialization=True)
    return model, tok


# A decoder small enough to compile in seconds, with GQA and an explicit head_dim (LoRA and train-step tests).
TINY_DECODER = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
)


# ---------------------------------------------------------------- resume checks (observable: files, stderr)


def metrics_lines(run_dir: str) -> list[str]:
    """metrics.jsonl as written (lines, not parsed: a recomputed row differs at least in its timings)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [ln for ln in f.read().splitlines() if ln.strip()]


def checkpoint_steps(run_dir: str) -> list[int]:
    """Finished checkpoint steps (Orbax renames a step's temporary folder to its number when done)."""
    ck = os.path.join(run_dir, "checkpoints")
    return sorted(int(d) for d in os.listdir(ck) if d.isdigit()) if os.path.isdir(ck) else []


def checkpoint_state(run_dir: str, step: int) -> dict:
    """Every array of a saved train state (parameters and optimizer state), by path, as numpy."""
    import warnings

    import jax
    import orbax.checkpoint as ocp

    with warnings.catch_warnings():  # "sharding info not provided": one CPU device reads it from the file
        warnings.simplefilter("ignore", UserWarning)
        tree = ocp.PyTreeCheckpointer().restore(os.path.join(run_dir, "checkpoints", str(step), "state"))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_states_equal(a: dict, b: dict, what: str, atol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b), f"{what}: different state trees"
    assert any("opt" in k for k in a), f"{what}: no optimizer state in {sorted(a)[:5]}"
    for k in a:
        d = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) if a[k].size else 0.0
        assert d <= atol, f"{what}: {k} differs by {d:g}"


def assert_resumed_not_restarted(before: list[str], after: list[str], stderr: str, step: int, total: int) -> None:
    """A re-run after a kill resumed at ``step``: it says so, the rows logged up to ``step`` before the
    kill are still there byte for byte (not recomputed), and every train step is logged exactly once."""
    assert f"resumed from step {step} (" in stderr, f"no 'resumed from step {step}' in:\n{stderr[-3000:]}"

    def step_of(line: str) -> int:
        return json.loads(line)["step"]

    kept = [ln for ln in before if step_of(ln) <= step]
    assert sum("loss" in json.loads(ln) for ln in kept) >= step, "too few rows before the kill to tell"
    assert after[: len(kept)] == kept, "rows logged before the kill were rewritten (recomputed?)"
    train = [json.loads(ln)["step"] for ln in after if "loss" in json.loads(ln)]
    assert train == list(range(1, total + 1)), f"train steps logged: {train}"
