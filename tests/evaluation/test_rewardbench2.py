"""RewardBench 2 scoring: a hand-worked example, a plain transcription of reward-bench's run_v2 rules on
random tied scores, and ``rm-jax eval --rewardbench2`` against transformers on a tiny random RM."""

import json
import math

import numpy as np
import pytest

from rm_jax import cli
from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.data.rewardbench2_sets import RB2Set, load_rewardbench2
from rm_jax.evaluation.rewardbench2 import best_of_n, score_sets, ties_score

# ----------------------------------------------------------------------------- the rules, written plainly


def plain_run_v2(rows, scores):
    """reward-bench 0.1.4 run_v2, transcribed: reroll_and_score_dataset per set, process_single_model (with
    sample_stats) for Ties, then the unweighted mean of subsets. ``rows``: dicts id / subset / num_correct;
    ``scores``: a list per row."""
    results = {}
    for subset in sorted({r["subset"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["subset"] == subset]
        if subset.lower() != "ties":
            res = []
            for i in idx:
                s = scores[i]
                m = np.max(s)
                res.append((1 / np.sum(np.asarray(s) == m)) if s[0] == m else 0)
            results[subset] = sum(res) / len(res)
            continue
        stats = {"ref": {}, "tied": {}}
        for i in idx:
            kind, pid = rows[i]["id"].split(":")
            good = [sc for j, sc in enumerate(scores[i]) if j < rows[i]["num_correct"]]
            bad = [sc for j, sc in enumerate(scores[i]) if j >= rows[i]["num_correct"]]
            stats[kind][int(pid)] = {
                "accurate": min(good) > max(bad),
                "dcm": max(good) - min(good) if len(good) > 1 else None,
                "cim": min(good) - max(bad),
            }
        ref, tied = stats["ref"], stats["tied"]
        acc_ref = np.mean([r["accurate"] for r in ref.values()]) if ref else 0
        acc_tied = np.mean([r["accurate"] for r in tied.values()]) if tied else 0
        common = set(ref) & set(tied)
        if common:
            with_dcm = [r for r in common if tied[r]["dcm"] is not None]
            pref = np.mean([tied[r]["cim"] > tied[r]["dcm"] for r in with_dcm])
            hard = np.mean([min(ref[r]["cim"], tied[r]["cim"]) > tied[r]["dcm"] for r in with_dcm])
            ratios = [min(ref[r]["cim"], tied[r]["cim"]) / tied[r]["dcm"] for r in with_dcm if tied[r]["dcm"] > 0]
            margin = np.mean([math.tanh(x - 1) for x in ratios]) if ratios else 0
        else:
            pref = hard = margin = 0
        results[subset] = float(0.3 * acc_tied + 0.3 * acc_ref + 0.2 * pref + 0.2 * hard + 0.01 * margin)
    return float(np.mean(list(results.values()))), results


def _sets(rows):
    return [
        RB2Set(str(r["id"]), r["subset"], "p", tuple(f"c{j}" for j in range(r["n"])), r["num_correct"]) for r in rows
    ]


# ----------------------------------------------------------------------------- hand-worked


def test_best_of_n_by_hand():
    assert best_of_n([3, 1, 2, 0]) == 1.0
    assert best_of_n([2, 2, 1, 0]) == 0.5  # an exact tie for the top: shared
    assert best_of_n([1, 3, 1, 0]) == 0.0
    assert best_of_n([5, 5, 5, 1]) == pytest.approx(1 / 3)
    assert best_of_n([0, 0, 0, 0]) == 0.25


def test_hand_worked_example():
    rows = [
        dict(id="a", subset="Math", num_correct=1, n=4, s=[3, 1, 2, 0]),  # 1
        dict(id="b", subset="Math", num_correct=1, n=4, s=[2, 2, 1, 0]),  # 1/2
        dict(id="c", subset="Math", num_correct=1, n=4, s=[1, 3, 1, 0]),  # 0
        dict(id="d", subset="Math", num_correct=1, n=4, s=[5, 5, 5, 1]),  # 1/3
        dict(id="e", subset="Focus", num_correct=1, n=4, s=[0, 0, 0, 0]),  # 1/4
        # Ties, prompt 0: ref accurate (4 > 3), margin 1; tied accurate (3 > 2), margin 1, spread 2
        dict(id="ref:0", subset="Ties", num_correct=1, n=4, s=[4, 1, 2, 3]),
        dict(id="tied:0", subset="Ties", num_correct=2, n=4, s=[5, 3, 1, 2]),
        # prompt 1: ref wrong (2 < 3), margin -1; tied accurate, margin 3, spread 0
        dict(id="ref:1", subset="Ties", num_correct=1, n=3, s=[2, 3, 0]),
        dict(id="tied:1", subset="Ties", num_correct=2, n=3, s=[4, 4, 1]),
    ]
    got = score_sets(_sets(rows), [r["s"] for r in rows])
    math_ = (1 + 0.5 + 0 + 1 / 3) / 4
    # 0.3 * tied acc 1 + 0.3 * ref acc 1/2 + 0.2 * (tied margin > spread: 1 > 2 no, 3 > 0 yes)
    # + 0.2 * (min margin > spread: 1 > 2 no, -1 > 0 no) + 0.01 * tanh(1/2 - 1) (prompt 1's spread is 0: left out)
    ties = 0.3 + 0.15 + 0.1 + 0.0 + 0.01 * math.tanh(-0.5)
    assert got["subsets"] == pytest.approx({"Focus": 0.25, "Math": math_, "Ties": ties}, abs=1e-12)
    assert got["score"] == pytest.approx((math_ + 0.25 + ties) / 3, abs=1e-12)
    assert got["sets"] == 9 and got["subset_sets"] == {"Math": 4, "Focus": 1, "Ties": 4}


def test_ties_edge_cases_as_in_0_1_4():
    # no spread and no margin: nothing accurate, not preferred, and no tanh term (spread 0 is left out)
    assert ties_score(["ref:3", "tied:3"], [1, 2], [[1.0, 1.0], [1.0, 1.0, 1.0]]) == 0.0
    # no prompt with both kinds: only the accuracy terms
    assert ties_score(["ref:1", "tied:2"], [1, 2], [[1.0, 0.0], [2.0, 1.0, 0.0]]) == pytest.approx(0.6)
    # a tied set with one correct answer has no spread: it counts for accuracy only
    assert ties_score(["ref:1", "tied:1"], [1, 1], [[1.0, 0.0], [2.0, 0.0]]) == pytest.approx(0.6)


def test_matches_plain_run_v2_on_random_tied_scores():
    rng = np.random.default_rng(0)
    for trial in range(20):
        rows = []
        for subset in ("Factuality", "Focus", "Math", "Precise IF", "Safety"):
            for i in range(int(rng.integers(3, 12))):
                rows.append(dict(id=f"{subset}-{i}", subset=subset, num_correct=1, n=int(rng.integers(2, 7))))
        for k in range(int(rng.integers(2, 10))):
            if rng.random() < 0.9:
                rows.append(dict(id=f"ref:{k}", subset="Ties", num_correct=1, n=int(rng.integers(2, 6))))
            nc = int(rng.integers(1, 5))  # one correct answer: no spread
            rows.append(dict(id=f"tied:{k}", subset="Ties", num_correct=nc, n=nc + int(rng.integers(1, 4))))
        rows.append(dict(id="ref:999", subset="Ties", num_correct=1, n=3))  # a ref without its tied set
        rows.append(dict(id="ref:998", subset="Ties", num_correct=1, n=3))
        rows.append(dict(id="tied:998", subset="Ties", num_correct=2, n=3))
        # few distinct values: many exact ties, some zero spreads
        levels = rng.normal(size=4) if trial % 2 else np.arange(4.0)
        scores = [list(rng.choice(levels, size=r["n"])) for r in rows]
        want_score, want = plain_run_v2(rows, scores)
        got = score_sets(_sets(rows), scores)
        assert got["subsets"] == pytest.approx(want, abs=1e-12), trial
        assert got["score"] == pytest.approx(want_score, abs=1e-12), trial


# ----------------------------------------------------------------------------- end to end vs transformers

SEQ_LEN = 80


def _rb2_rows():
    a, b, c = "the cat sat on the mat", "a dog ran far away from home", "rain fell on every roof of that town"
    long_one = " ".join(["ships lost at sea"] * 40)  # longer than SEQ_LEN on its own: cut from the left
    rows = [
        ("1", "Math", "what is two plus two", [a], [b, c, "four"]),
        ("2", "Math", "what is two plus two", ["four"], ["four", b, c]),  # exact tie with the chosen
        ("3", "Factuality", "name a colour", [c], [a, a, b]),  # a repeated rejected completion
        ("4", "Factuality", "name a colour", ["blue"], [long_one, a, "red"]),
        ("5", "Focus", "tell me about cats", [a], [b, c, "cats"]),
        ("6", "Precise IF", "answer in one word", ["yes"], ["no", "maybe", "yes indeed"]),
        ("ref:0", "Ties", "name a prime", ["two"], ["four", "six", "nine"]),
        ("tied:0", "Ties", "name a prime", ["two", "three", "five"], ["four", "six", "nine"]),
        ("ref:1", "Ties", "name a vowel", ["a"], ["b", "c"]),
        ("tied:1", "Ties", "name a vowel", ["e", "e"], ["b", "c"]),  # equal correct: zero spread
    ]
    return [
        {
            "id": i,
            "prompt": p,
            "chosen": ch,
            "rejected": rj,
            "num_correct": len(ch),
            "num_incorrect": len(rj),
            "total_completions": len(ch) + len(rj),
            "subset": s,
            "models": [],
            "additional_metadata": {},
        }
        for i, s, p, ch, rj in rows
    ]


@pytest.fixture(scope="module")
def hf_rm(tmp_path_factory):
    from tests.helpers import make_hf_rm_with_tokenizer

    d = str(tmp_path_factory.mktemp("rb2_rm"))
    model, tok = make_hf_rm_with_tokenizer("llama", d, seed=3)
    return d, model, tok


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _torch_attrs(model, tok, prompt, response):
    import torch

    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids = list(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
    ids = ids[-SEQ_LEN:]  # over-long: the head reads the end (no BOS in this template)
    with torch.no_grad():
        return model(input_ids=torch.as_tensor([ids])).logits[0].numpy().astype(np.float64)


def test_eval_rewardbench2_matches_transformers(hf_rm, tmp_path, capsys):
    d, model, tok = hf_rm
    rows = _rb2_rows()
    src = _write(tmp_path / "rb2.jsonl", rows)
    out = tmp_path / "res.json"
    argv = ["eval", "--model", d, "--rewardbench2", src, "--seq-len", str(SEQ_LEN), "--batch-rows", "2"]
    assert cli.main(argv + ["--max-segments", "3", "--no-progress", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    rb2 = res["rewardbench2"]

    attrs = [[_torch_attrs(model, tok, r["prompt"], c) for c in r["chosen"] + r["rejected"]] for r in rows]
    w = np.asarray(REWARD_PRESETS["70b-rewardbench"])
    torch_scores = [list(np.stack(a) @ w) for a in attrs]
    want_score, want = plain_run_v2(rows, torch_scores)
    assert rb2["subsets"] == pytest.approx(want, abs=1e-6)
    assert rb2["score"] == pytest.approx(want_score, abs=1e-6)
    assert torch_scores[1][0] == torch_scores[1][1]  # set 2's exact tie is in the reference too
    for name, pw in REWARD_PRESETS.items():
        s, _ = plain_run_v2(rows, [list(np.stack(a) @ np.asarray(pw)) for a in attrs])
        assert rb2["presets"][name]["score"] == pytest.approx(s, abs=1e-6), name

    counts = res["counts"]["rewardbench2"]
    assert counts["sets"] == len(rows) and counts["completions"] == sum(r["total_completions"] for r in rows)
    assert counts["response_cut"] == 1 and counts["dropped_sets"] == 0
    assert counts["distinct_conversations"] < counts["completions"]  # repeats scored once

    recs = [json.loads(line) for line in open(str(out)[:-5] + ".rewardbench2_scores.jsonl")]
    got = np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in recs])
    np.testing.assert_allclose(got, np.concatenate([np.stack(a) for a in attrs]), atol=1e-4, rtol=0)
    assert recs[4]["id"] == "2" and recs[4]["reward"] == recs[5]["reward"]  # identical text, identical reward
    assert [r["correct"] for r in recs[:4]] == [True, False, False, False]
    assert "RewardBench 2" in printed and "Ties (4)" in printed and "overall" in printed


def test_reweight_from_saved_scores(hf_rm, tmp_path, capsys):
    d, _, _ = hf_rm
    src = _write(tmp_path / "rb2.jsonl", _rb2_rows())
    out = tmp_path / "res.json"
    argv = ["eval", "--model", d, "--rewardbench2", src, "--seq-len", str(SEQ_LEN), "--drop-long-pairs"]
    assert cli.main(argv + ["--no-progress", "--output", str(out)]) == 0
    first = json.loads(out.read_text())["rewardbench2"]
    again = tmp_path / "again.json"
    argv = ["eval", "--from-predictions", str(out), "--weights", "helpfulness-only", "--output", str(again)]
    assert cli.main(argv) == 0
    res = json.loads(again.read_text())
    assert res["weights"]["label"] == "helpfulness-only" and res["counts"]["rewardbench2"]["scored_sets"] == 9
    assert res["rewardbench2"]["score"] == pytest.approx(first["presets"]["helpfulness-only"]["score"], abs=1e-12)
    assert res["rewardbench2"]["subsets"] == pytest.approx(first["presets"]["helpfulness-only"]["subsets"])
    assert (tmp_path / "again.rewardbench2_scores.jsonl").exists()  # usable as a source itself
    assert "RewardBench 2" in capsys.readouterr().out


def test_drop_long_pairs_drops_the_whole_set(hf_rm, tmp_path):
    d, _, _ = hf_rm
    src = _write(tmp_path / "rb2.jsonl", _rb2_rows())
    out = tmp_path / "res.json"
    argv = ["eval", "--model", d, "--rewardbench2", src, "--seq-len", str(SEQ_LEN), "--drop-long-pairs"]
    assert cli.main(argv + ["--no-progress", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    c = res["counts"]["rewardbench2"]
    assert c["dropped_sets"] == 1 and c["scored_sets"] == len(_rb2_rows()) - 1 and c["response_cut"] == 0
    assert res["rewardbench2"]["subset_sets"]["Factuality"] == 1
    recs = [json.loads(line) for line in open(str(out)[:-5] + ".rewardbench2_scores.jsonl")]
    assert [r["reward"] is None for r in recs if r["id"] == "4"] == [True] * 4


def test_bundled_sample_scores(hf_rm, tmp_path):
    d, _, _ = hf_rm
    out = tmp_path / "res.json"
    argv = ["eval", "--model", d, "--rewardbench2", "bundled", "--no-progress", "--output", str(out)]
    assert cli.main(argv + ["--batch-rows", "8"]) == 0
    rb2 = json.loads(out.read_text())["rewardbench2"]
    assert set(rb2["subsets"]) == {"Factuality", "Focus", "Math", "Ties"}
    assert rb2["sets"] == len(load_rewardbench2("bundled"))
    assert 0.0 <= rb2["score"] <= 1.0


def test_share_prompts_scores_every_completion_as_unshared(hf_rm, tmp_path):
    """`--share-prompts` (each set's prompt encoded once) and `--no-share-prompts` give the same
    per-completion scores within 1e-5; only the shared run reports saved prompt tokens."""
    d, _, _ = hf_rm
    src = _write(tmp_path / "rb2.jsonl", _rb2_rows())
    got = {}
    for flag in ("--share-prompts", "--no-share-prompts"):
        out = tmp_path / f"{flag[2:]}.json"
        argv = ["eval", "--model", d, "--rewardbench2", src, "--seq-len", str(SEQ_LEN), "--max-segments", "3"]
        assert cli.main(argv + [flag, "--no-progress", "--output", str(out)]) == 0
        recs = [json.loads(line) for line in open(str(out)[:-5] + ".rewardbench2_scores.jsonl")]
        got[flag] = (np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in recs]), json.loads(out.read_text()))
    shared, plain = got["--share-prompts"][0], got["--no-share-prompts"][0]
    np.testing.assert_allclose(shared, plain, atol=1e-5, rtol=0)
    sharing = got["--share-prompts"][1]["counts"]["rewardbench2"]["sharing"]
    assert sharing["prompt_tokens_saved"] > 0 and sharing["tokens"] < sharing["tokens_unshared"]
    assert "sharing" not in got["--no-share-prompts"][1]["counts"]["rewardbench2"]
