"""Policies loaded from an rm_jax run folder: a LoRA SFT run (adapters applied unmerged on its frozen base)
gives, through `rm-jax lm logprob` and `rm-jax lm generate`, the log-probs and responses of its merged export
(W + A B alpha/r, an HF *ForCausalLM folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rm_jax.cli import main
from tests.helpers import TINY, make_hf_causal_lm_with_tokenizer

pytestmark = pytest.mark.slow  # trains a run (about 20 s on two CPU cores)

PROMPTS = [
    {"prompt": "What is 2 plus 2?"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a red fruit."}]},
]
RESPONSES = [
    {"prompt": "What is 2 plus 2?", "response": "2 plus 2 equals 4."},
    {
        "prompt": "Name a red fruit.",
        "response": "An apple is a red fruit, and so is a cherry.",
        "attributes": {"verbosity": 3},
    },
]


@pytest.fixture(scope="module")
def lora_sft_run(tmp_path_factory, data_files):
    """A rank-4 LoRA SFT run from a tiny random HF causal LM (4 steps) and its merged export: (base, run, merged)."""
    d = tmp_path_factory.mktemp("lora_sft")
    base, run, merged = str(d / "base"), str(d / "run"), str(d / "merged")
    make_hf_causal_lm_with_tokenizer("llama", base)
    argv = ["train", TINY, f"run_dir={run}", f"model.path={base}", "model.arch={}", "task=sft", "lora.rank=4"]
    argv += [f"data.train={data_files['train']}", f"data.validation={data_files['validation']}"]
    # lr 2e-3: moves the policy (log-probs by > 1) and keeps its samples varied (1e-2 makes it emit dots)
    argv += ["train.max_steps=4", "train.eval_every=4", "checkpoint.every_steps=4", "train.lr=2e-3"]
    argv += ["train.warmup_steps=0", "logging.progress=false", "mesh.num_devices=1"]
    assert main(argv) == 0
    assert main(["export", run, "--out", merged]) == 0
    return base, run, merged


def _lm(tmp_path, cmd: str, model: str, rows: list, *flags: str) -> list[dict]:
    src, out = tmp_path / f"{cmd}.in.jsonl", tmp_path / f"{cmd}.out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["lm", cmd, "--model", model, "--input", str(src), "--output", str(out), "--no-progress", *flags]) == 0
    return [json.loads(x) for x in open(out)]


def test_lora_run_folder_logprobs_equal_its_merged_export(lora_sft_run, tmp_path):
    base, run, merged = lora_sft_run
    got, want, before = (
        np.array([r["logprob"] for r in _lm(tmp_path, "logprob", m, RESPONSES)]) for m in (run, merged, base)
    )
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(want - before).max() > 1e-2  # the adapters changed the policy


def test_lora_run_folder_generates_as_its_merged_export(lora_sft_run, tmp_path):
    _, run, merged = lora_sft_run
    for flags in (["--greedy"], ["--n", "2", "--seed", "3", "--top-p", "0.9"]):
        got, want = (_lm(tmp_path, "generate", m, PROMPTS, "--max-new-tokens", "8", *flags) for m in (run, merged))
        assert [r["responses"] for r in got] == [r["responses"] for r in want], flags
        assert all(any(x.strip() for x in r["responses"]) for r in got)
