"""RM-Bench, JudgeBench and HelpSteer3 scored by a tiny random HF RM through rm_jax equal the authors'
metrics (re-implemented in tests/evaluation/test_rm_bench.py and test_judgebench.py from their code) on
transformers' scores of the same model and rows; every response's attributes match transformers'."""

import json

import numpy as np
import pytest

from rm_jax.core.attributes import REWARD_PRESETS
from rm_jax.data.conversation import split_prompt
from rm_jax.data.helpsteer3_pairs import load_helpsteer3
from rm_jax.data.judgebench_pairs import JudgeBenchPair, load_judgebench
from rm_jax.data.rm_bench_rows import load_rm_bench
from rm_jax.evaluation.yardsticks import evaluate_helpsteer3, evaluate_judgebench, evaluate_rm_bench, judgebench_records
from tests.evaluation.test_judgebench import _theirs as their_judgebench_metric
from tests.evaluation.test_rm_bench import _their_compute_accuracy

W = np.asarray(REWARD_PRESETS["70b-rewardbench"])


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from tests.helpers import make_hf_rm_with_tokenizer

    d = str(tmp_path_factory.mktemp("yardstick_rm"))
    model, tok = make_hf_rm_with_tokenizer("llama", d, seed=4)
    return d, model, tok


@pytest.fixture(scope="module")
def rm(rm_dir):
    from rm_jax.runs.read import load_scoring_model

    d, model, tok = rm_dir
    return load_scoring_model(d), model, tok


def _torch_attrs(model, tok, messages):
    import torch

    ids = list(tok.apply_chat_template(messages, tokenize=True)["input_ids"])
    with torch.no_grad():
        return model(input_ids=torch.as_tensor([ids])).logits[0].numpy().astype(np.float64)


def _turns(prompt, response):
    msgs = split_prompt(prompt) if isinstance(prompt, str) else list(prompt)
    return msgs + [{"role": "assistant", "content": response}]


def test_rm_bench_equals_their_compute_accuracy_on_transformers_scores(rm):
    scoring, model, tok = rm
    rows = load_rm_bench("bundled")[:10]
    report, pred = evaluate_rm_bench(scoring, rows, progress=False, batch_rows=4)
    torch_attrs = np.stack(
        [_torch_attrs(model, tok, _turns(r.prompt, t)) for r in rows for t in (*r.chosen, *r.rejected)]
    )
    np.testing.assert_allclose(pred, torch_attrs, atol=1e-4, rtol=0)
    reward = (torch_attrs @ W).reshape(len(rows), 6)
    theirs = _their_compute_accuracy(
        [{"domain": r.domain, "score_chosen": list(s[:3]), "score_rejected": list(s[3:])} for r, s in zip(rows, reward)]
    )
    assert report["overall"] == pytest.approx(theirs["total_avg_acc"], abs=1e-6)
    for d in ("chat", "math", "code", "safety"):
        assert report["domains"][d] == pytest.approx(theirs[d], abs=1e-6)
    assert (report["hard"], report["normal"], report["easy"]) == pytest.approx(
        (theirs["hard_acc"], theirs["normal_acc"], theirs["easy_acc"]), abs=1e-6
    )
    assert set(report["presets"]) >= set(REWARD_PRESETS)


def test_judgebench_with_an_exact_tie_equals_the_single_game_metric(rm):
    scoring, model, tok = rm
    pairs = load_judgebench("bundled")[:8]
    p0 = pairs[0]  # the same text on both sides: an exact tie, which JudgeBench decides as "B>A"
    pairs[0] = JudgeBenchPair(p0.pair_id, p0.source, p0.question, p0.response_a, p0.response_a, "A>B")
    report, pred = evaluate_judgebench(scoring, pairs, progress=False, batch_rows=4)
    torch_reward = np.asarray(
        [_torch_attrs(model, tok, _turns(p.question, t)) @ W for p in pairs for t in (p.response_a, p.response_b)]
    ).reshape(-1, 2)
    recs = [
        {"source": p.source, "label": p.label, "judgments": [{"decision": "A>B" if a > b else "B>A"}]}
        for p, (a, b) in zip(pairs, torch_reward)
    ]
    assert 100 * report["overall"] == pytest.approx(their_judgebench_metric(recs, lambda x: True), abs=1e-6)
    assert report["ties"] == 1 and report["pairs"] == 8
    recs_out = judgebench_records(pairs, pred, list(scoring.attributes), "70b-rewardbench")
    assert recs_out[0]["reward"] == recs_out[1]["reward"] and recs_out[0]["response"] == "A"


def test_helpsteer3_accuracies_equal_transformers_scores_with_the_sign_convention(rm):
    scoring, model, tok = rm
    hs3 = load_helpsteer3("bundled", "validation")
    rows = hs3.rows[:12]
    assert any(len(r["prompt"]) > 1 for r in rows)  # multi-turn contexts through the chat template
    report, _ = evaluate_helpsteer3(scoring, rows, ties_left_out=hs3.ties_left_out, progress=False, batch_rows=4)
    right = {}
    for r in rows:
        c, j = (_torch_attrs(model, tok, _turns(r["prompt"], t)) @ W for t in (r["chosen"], r["rejected"]))
        right.setdefault(r["domain"], []).append(c > j)
    assert report["domains"] == pytest.approx({d: float(np.mean(v)) for d, v in right.items()}, abs=1e-9)
    assert report["ties_left_out"] == hs3.ties_left_out > 0


@pytest.mark.parametrize("name", ["rm_bench", "judgebench", "helpsteer3"])
def test_saved_scores_rescore_every_weighting_as_the_live_run(rm, tmp_path, name):
    """A score file read back (what sweeps and reports do) gives the same report under the run's weights and a
    preset's; the sweep columns name the headline, its parts and every domain / category."""
    from rm_jax.core.files import write_jsonl
    from rm_jax.evaluation.yardsticks import (
        evaluate_yardstick,
        load_yardstick,
        load_yardstick_scores,
        yardstick_columns,
        yardstick_metrics,
    )

    scoring, _, _ = rm
    data = load_yardstick(name, "bundled")
    if name == "helpsteer3":
        data.rows = data.rows[:10]
    else:
        data = data[:10]
    report, records = evaluate_yardstick(scoring, name, data, "70b-rewardbench", progress=False, batch_rows=4)
    path = str(tmp_path / f"{name}.jsonl")
    write_jsonl(path, records)
    saved, pred, attributes = load_yardstick_scores(name, path)
    again = yardstick_metrics(name, saved, pred, attributes, "70b-rewardbench")
    head = "accuracy" if name == "helpsteer3" else "overall"
    assert again[head] == report[head]
    assert (
        yardstick_metrics(name, saved, pred, attributes, "helpfulness-only")[head]
        == report["presets"]["helpfulness-only"]
    )
    cols = yardstick_columns(name, again)
    prefix = {"rm_bench": "rmb", "judgebench": "jb", "helpsteer3": "hs3"}[name]
    assert cols[f"{prefix}_{head}"] == report[head] and all(k.startswith(prefix + "_") for k in cols)
    groups = {"rm_bench": "domains", "judgebench": "categories", "helpsteer3": "domains"}[name]
    assert {f"{prefix}_{k}" for k in report[groups]} <= set(cols)


def test_rm_bench_length_policy_cuts_the_whole_text_from_the_left_as_their_runner(rm):
    """--length-policy rm_bench: RM-Bench's run_rm.py sets truncation_side='left' and max_length; the ids
    scored equal tokenizer(text, truncation=True, max_length) on the left, and the cut ones are counted."""
    import torch

    from rm_jax.data.rm_bench_rows import RMBenchRow
    from rm_jax.evaluation.yardsticks import evaluate_rm_bench

    scoring, model, tok = rm
    long_prompt = " ".join(["tell me about the colour of grass"] * 12)
    rows = [RMBenchRow("0", "chat", long_prompt, ("green", "it is green", "**green**"), ("red", "blue", "*pink*"))]
    report, pred = evaluate_rm_bench(scoring, rows, seq_len=40, length_policy="rm_bench", progress=False)
    assert report["counts"]["cut"] == 6 and report["counts"]["truncation_side"] == "left"
    side = tok.truncation_side
    tok.truncation_side = "left"
    try:
        for k, resp in enumerate((*rows[0].chosen, *rows[0].rejected)):
            text = tok.apply_chat_template(_turns(long_prompt, resp), tokenize=False)
            ids = tok(text, truncation=True, max_length=40)["input_ids"]
            assert len(ids) == 40
            with torch.no_grad():
                want = model(input_ids=torch.as_tensor([ids])).logits[0].numpy()
            np.testing.assert_allclose(pred[k], want, atol=1e-4, rtol=0)
    finally:
        tok.truncation_side = side
    assert tok.truncation_side == side  # the policy leaves the tokenizer as it found it


def _small(name, data):
    if name == "helpsteer3":
        data.rows = data.rows[:6]
        return data
    return data[:4]


@pytest.mark.parametrize(
    "name,policy", [("rm_bench", "prompt-left"), ("rm_bench", "rm_bench"), ("judgebench", None), ("helpsteer3", None)]
)
def test_share_prompts_scores_every_response_as_unshared(rm, name, policy):
    """share_prompts=True (a row's responses laid out after one copy of their prompt) gives every response the
    attributes of share_prompts=False within 1e-5; only the shared run counts saved prompt tokens."""
    from rm_jax.evaluation.yardsticks import evaluate_yardstick, load_yardstick

    scoring, _, _ = rm
    data = _small(name, load_yardstick(name, "bundled"))
    opts = dict(progress=False, batch_rows=4, length_policy=policy or "prompt-left")
    got = {s: evaluate_yardstick(scoring, name, data, None, share_prompts=s, **opts) for s in (True, False)}
    (rep_s, recs_s), (rep_p, recs_p) = got[True], got[False]
    attrs = [[list(r["attributes"].values()) for r in recs] for recs in (recs_s, recs_p)]
    np.testing.assert_allclose(attrs[0], attrs[1], atol=1e-5, rtol=0)
    sharing = rep_s["counts"]["sharing"]
    assert sharing["prompt_tokens_saved"] > 0 and sharing["tokens"] < sharing["tokens_unshared"]
    assert sharing["shared_groups"] >= 1
    assert "sharing" not in rep_p["counts"]


def test_eval_passes_share_prompts_to_the_yardsticks(rm_dir, tmp_path):
    """rm-jax eval's --no-share-prompts reaches the yardsticks (no sharing counted); --share-prompts is
    written under counts.<yardstick>.sharing."""
    from rm_jax import cli

    d = rm_dir[0]
    counts = {}
    for flag in ("--share-prompts", "--no-share-prompts"):
        out = str(tmp_path / f"{flag[2:]}.json")
        argv = ["eval", "--model", d, "--judgebench", "bundled", flag, "--no-progress", "--output", out]
        assert cli.main(argv) == 0
        counts[flag] = json.load(open(out))["counts"]["judgebench"]
    assert counts["--share-prompts"]["sharing"]["prompt_tokens_saved"] > 0
    assert "sharing" not in counts["--no-share-prompts"]
