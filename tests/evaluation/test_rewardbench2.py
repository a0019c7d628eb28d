"""RewardBench 2 scoring: a hand-worked example, a plain transcription of reward-bench's run_v2 rules on
random tied scores and on the bundled sample's real scores, length drops (whole Ties pairs, emptied
subsets named), and ``rm-jax eval --rewardbench2`` (both length policies) against transformers on a tiny
random RM."""

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
    """reward-bench v0.1.4 (commit b29c8c6), transcribed without rm_jax code: ``rewardbench/utils.py``
    ``reroll_and_score_dataset`` L561-562 per set (``1 / #max`` if the first score is the max, else 0);
    ``scripts/run_v2.py`` L323-344 per subset (``np.unique`` order; Ties through ``process_single_model``,
    others ``sum(results) / len``); ``process_single_model`` L1040-1163 with ``sample_stats`` L1000-1037
    for Ties; then the unweighted mean of subsets (the RewardBench 2 paper's overall; run_v2 stops at
    subsets). ``rows``: dicts id / subset / num_correct; ``scores``: a list per row."""
    results = {}
    for subset in sorted({r["subset"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["subset"] == subset]
        if subset.lower() != "ties":
            res = []
            for i in idx:
                s = scores[i]
                m = np.max(s)
                res.append((1 / np.sum(np.asarray(s) == m)) if s[0] == m else 0)
            results[subset] = sum(res) / len(res)  # run_v2: num_correct / num_total
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


def test_nan_set_drops_its_ties_partner_and_empty_subsets_are_named():
    rows = [
        dict(id="a", subset="Math", num_correct=1, n=3),
        dict(id="b", subset="Math", num_correct=1, n=3),
        dict(id="c", subset="Precise IF", num_correct=1, n=3),  # every set dropped below
        dict(id="ref:0", subset="Ties", num_correct=1, n=3),
        dict(id="tied:0", subset="Ties", num_correct=2, n=3),
        dict(id="ref:1", subset="Ties", num_correct=1, n=3),  # dropped: takes tied:1 with it
        dict(id="tied:1", subset="Ties", num_correct=2, n=3),
    ]
    scores = [[3.0, 1.0, 2.0], [1.0, 2.0, 0.0], [1.0, np.nan, 0.0], [2.0, 1.0, 0.0], [5.0, 4.0, 4.5]]
    scores += [[np.nan, 1.0, 0.0], [0.0, 3.0, 1.0]]
    got = score_sets(_sets(rows), scores)
    keep = [0, 1, 3, 4]
    want_score, want = plain_run_v2([rows[i] for i in keep], [scores[i] for i in keep])
    assert got["subsets"] == pytest.approx(want, abs=1e-12) and got["score"] == pytest.approx(want_score, abs=1e-12)
    assert got["empty_subsets"] == ["Precise IF"] and got["overall_over"] == ["Math", "Ties"]
    assert got["sets"] == 4 and got["dropped_sets"] == 3 and got["subset_sets"] == {"Math": 2, "Ties": 2}


# ----------------------------------------------------------------------------- end to end vs transformers

SEQ_LEN = 80


LONG = " ".join(["ships lost at sea"] * 40)  # longer than SEQ_LEN on its own: cut from the left (or dropped)


def _rb2_rows(long_in=()):
    """Ten sets; the ids in ``long_in`` get LONG as one more rejected completion."""
    a, b, c = "the cat sat on the mat", "a dog ran far away from home", "rain fell on every roof of that town"
    long_one = LONG
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
        for i, s, p, ch, rj in [(i, s, p, ch, rj + [LONG] * (i in long_in)) for i, s, p, ch, rj in rows]
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


@pytest.fixture(scope="module")
def dropped_run(hf_rm, tmp_path_factory):
    """``--drop-long-pairs`` on rows where sets 4 (Factuality), 6 (the only Precise IF) and ref:1 hold a
    completion too long on its own: (source rows, results path, printed output)."""
    d, _, _ = hf_rm
    tmp = tmp_path_factory.mktemp("rb2_drop")
    rows = _rb2_rows(long_in=("6", "ref:1"))
    src = _write(tmp / "rb2.jsonl", rows)
    out = tmp / "res.json"
    argv = ["eval", "--model", d, "--rewardbench2", src, "--seq-len", str(SEQ_LEN), "--drop-long-pairs"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(argv + ["--no-progress", "--output", str(out)]) == 0
    return rows, out, buf.getvalue()


def test_drop_long_pairs_drops_whole_ties_pairs_and_names_empty_subsets(dropped_run):
    rows, out, printed = dropped_run
    res = json.loads(out.read_text())
    c, rb2 = res["counts"]["rewardbench2"], res["rewardbench2"]
    # 4, 6 and ref:1 are too long; tied:1 goes with ref:1
    assert c["dropped_sets"] == 4 and c["dropped_ties_partners"] == 1 and c["scored_sets"] == len(rows) - 4
    assert c["response_cut"] == 0
    recs = [json.loads(line) for line in open(str(out)[:-5] + ".rewardbench2_scores.jsonl")]
    gone = {r["id"] for r in recs if r["reward"] is None}
    assert gone == {"4", "6", "ref:1", "tied:1"}
    assert all(r["reward"] is None for r in recs if r["id"] in gone)
    assert rb2["empty_subsets"] == ["Precise IF"] and "Precise IF" not in rb2["subsets"]
    assert rb2["overall_over"] == ["Factuality", "Focus", "Math", "Ties"]
    assert rb2["subset_sets"] == {"Factuality": 1, "Focus": 1, "Math": 2, "Ties": 2}
    kept = [r for r in rows if r["id"] not in gone]
    by_id = {}
    for r in recs:
        by_id.setdefault(r["id"], []).append(r["reward"])
    want_score, want = plain_run_v2(kept, [by_id[r["id"]] for r in kept])
    assert rb2["subsets"] == pytest.approx(want, abs=1e-9) and rb2["score"] == pytest.approx(want_score, abs=1e-9)
    assert "overall = mean of 4 subsets (Factuality, Focus, Math, Ties)" in printed
    assert "no set left (all dropped for length), not in the overall: Precise IF" in printed


def test_reweight_from_saved_scores(dropped_run, tmp_path, capsys):
    _, out, _ = dropped_run
    first = json.loads(out.read_text())["rewardbench2"]
    again = tmp_path / "again.json"
    argv = ["eval", "--from-predictions", str(out), "--weights", "helpfulness-only", "--output", str(again)]
    assert cli.main(argv) == 0
    res = json.loads(again.read_text())
    assert res["weights"]["label"] == "helpfulness-only" and res["counts"]["rewardbench2"]["scored_sets"] == 6
    rb2 = res["rewardbench2"]
    assert rb2["score"] == pytest.approx(first["presets"]["helpfulness-only"]["score"], abs=1e-12)
    assert rb2["subsets"] == pytest.approx(first["presets"]["helpfulness-only"]["subsets"])
    assert rb2["empty_subsets"] == ["Precise IF"] and rb2["dropped_sets"] == 4  # the drops survive the file
    assert (tmp_path / "again.rewardbench2_scores.jsonl").exists()  # usable as a source itself
    assert "not in the overall: Precise IF" in capsys.readouterr().out


def test_bundled_sample_scores(hf_rm, tmp_path):
    """Every subset score and the overall, for --weights and every preset, equal reward-bench's formula
    (plain_run_v2, above) applied to the per-completion scores the run wrote."""
    d, _, _ = hf_rm
    out = tmp_path / "res.json"
    argv = ["eval", "--model", d, "--rewardbench2", "bundled", "--no-progress", "--output", str(out)]
    assert cli.main(argv + ["--batch-rows", "8"]) == 0
    rb2 = json.loads(out.read_text())["rewardbench2"]
    sets = load_rewardbench2("bundled")
    recs = [json.loads(line) for line in open(str(out)[:-5] + ".rewardbench2_scores.jsonl")]
    assert [(r["id"], r["index"]) for r in recs] == [(s.id, j) for s in sets for j in range(len(s.completions))]
    rows = [dict(id=s.id, subset=s.subset, num_correct=s.num_correct) for s in sets]
    bounds = np.cumsum([0] + [len(s.completions) for s in sets])

    def per_set(values):
        return [list(values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    want_score, want = plain_run_v2(rows, per_set([r["reward"] for r in recs]))
    assert set(want) == {"Factuality", "Focus", "Math", "Ties"} and rb2["sets"] == len(sets)
    assert rb2["subsets"] == pytest.approx(want, abs=1e-9, rel=0)
    assert rb2["score"] == pytest.approx(want_score, abs=1e-9, rel=0)
    attrs = np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in recs])
    for name, w in REWARD_PRESETS.items():
        p_score, p_subsets = plain_run_v2(rows, per_set(attrs @ np.asarray(w, np.float64)))
        assert rb2["presets"][name]["subsets"] == pytest.approx(p_subsets, abs=1e-9, rel=0), name
        assert rb2["presets"][name]["score"] == pytest.approx(p_score, abs=1e-9, rel=0), name


def test_eval_run_v2_policy_matches_transformers(hf_rm, tmp_path, capsys):
    """--length-policy run_v2: each completion is scored on tokenizer(text, truncation=True, max_length)
    (right side for this tokenizer: a long completion loses its end), every set kept, the cut counted."""
    import torch

    d, model, tok = hf_rm
    rows = _rb2_rows(long_in=("ref:1",))
    src = _write(tmp_path / "rb2.jsonl", rows)
    out = tmp_path / "res.json"
    max_len = 48
    argv = ["eval", "--model", d, "--rewardbench2", src, "--length-policy", "run_v2", "--seq-len", str(max_len)]
    assert cli.main(argv + ["--no-progress", "--output", str(out), "--max-segments", "3"]) == 0
    res = json.loads(out.read_text())

    attrs, n_cut = [], 0
    for r in rows:
        a = []
        for c in r["chosen"] + r["rejected"]:
            msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": c}]
            text = tok.apply_chat_template(msgs, tokenize=False)
            ids = tok(text, truncation=True, max_length=max_len)["input_ids"]
            n_cut += len(tok(text)["input_ids"]) > max_len
            with torch.no_grad():
                a.append(model(input_ids=torch.as_tensor([ids])).logits[0].numpy().astype(np.float64))
        attrs.append(np.stack(a))
    recs = [json.loads(line) for line in open(str(out)[:-5] + ".rewardbench2_scores.jsonl")]
    got = np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in recs])
    np.testing.assert_allclose(got, np.concatenate(attrs), atol=1e-4, rtol=0)
    want_score, want = plain_run_v2(rows, [list(a @ np.asarray(REWARD_PRESETS["70b-rewardbench"])) for a in attrs])
    assert res["rewardbench2"]["subsets"] == pytest.approx(want, abs=1e-6)
    assert res["rewardbench2"]["score"] == pytest.approx(want_score, abs=1e-6)
    c = res["counts"]["rewardbench2"]
    assert n_cut == 2 and c["cut"] == n_cut and c["length_policy"] == "run_v2" and c["truncation_side"] == "right"
    assert c["seq_len"] == max_len and c["dropped_sets"] == 0 and c["scored_sets"] == len(rows)
    printed = capsys.readouterr()
    assert "2 completions longer than 48 tokens were cut on the tokenizer's right side" in printed.err
    assert "length_policy run_v2" in printed.out
    assert cli.main(argv + ["--drop-long-pairs"]) == 1
    assert "run_v2 never drops" in capsys.readouterr().err


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
