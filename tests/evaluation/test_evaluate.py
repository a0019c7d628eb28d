"""``rm-jax eval`` against transformers (torch, CPU) on a tiny random RM with the bundled tokenizer."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from rm_jax import cli
from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.data.pipeline import bundled_tokenizer_path
from rm_jax.evaluation.evaluate import reweight_from_predictions
from rm_jax.evaluation.rewardbench import score_pairs

TOL = 1e-4
SEQ_LEN = 96

WORDS = (
    "the cat sat on a mat and then it ran far away from home because rain fell on every "
    "roof of that small town where people sang songs about old ships lost at sea"
).split()


def _text(rng, lo, hi):
    return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi + 1))))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A random 2-layer Llama RM (vocab 1000) saved with the bundled tokenizer; (dir, torch model, tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    d = str(tmp_path_factory.mktemp("tiny_rm"))
    tok = AutoTokenizer.from_pretrained(bundled_tokenizer_path())
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=1000,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        rope_theta=10000.0,
        num_labels=5,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    cfg.id2label = dict(enumerate(ATTRIBUTES))
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg).float().eval()
    with torch.no_grad():  # a spread of attribute scores, so rewards and rankings differ between presets
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
            if name.endswith("score.weight"):
                p.normal_(0, 1.0)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d, model, tok


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def _rb_rows():
    rng = np.random.default_rng(1)
    rows = []
    subsets = (
        ["alpacaeval-easy"] * 3
        + ["mt-bench-med"] * 2
        + ["llmbar-natural"] * 2
        + ["hep-python"] * 2
        + ["math-prm"] * 2
        + ["anthropic_helpful"] * 2
    )  # the last is in no section
    for i, s in enumerate(subsets):
        prompt = _text(rng, 3, 10)
        if i == 4:  # multi-turn
            prompt += "\n<extra_id_1>Assistant\n" + _text(rng, 2, 6) + "\n<extra_id_1>User\n" + _text(rng, 2, 6)
        rows.append(
            {"id": 100 + i, "subset": s, "prompt": prompt, "chosen": _text(rng, 2, 12), "rejected": _text(rng, 2, 12)}
        )
    return rows


def _hs_rows():
    rng = np.random.default_rng(2)
    rows = []
    for g in range(8):
        prompt = _text(rng, 3, 10)
        if g == 1:
            prompt = _text(rng, 60, 60)  # over-long with its response: the prompt is cut from the left
        if g == 2:
            prompt += "\n<extra_id_1>Assistant\n" + _text(rng, 2, 5) + "\n<extra_id_1>User\n" + _text(rng, 2, 5)
        for k in range(2):
            labels = [int(x) for x in rng.integers(0, 5, size=5)]
            row = {"prompt": prompt, "response": _text(rng, 2, 12), **dict(zip(ATTRIBUTES, labels))}
            rows.append(row)
    rows[6]["helpfulness"] = rows[7]["helpfulness"]  # a label tie: left out, counted
    rows[8]["helpfulness"] = -100  # missing helpfulness: its pair is skipped
    rows[9]["coherence"] = -100
    rows[11]["response"] = _text(np.random.default_rng(3), 150, 150)  # longer than seq_len alone: dropped
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "rb": _write_jsonl(d / "rb.jsonl", _rb_rows()),
        "hs": _write_jsonl(d / "hs.jsonl", _hs_rows()),
        "rb_rows": _rb_rows(),
        "hs_rows": _hs_rows(),
    }


def _messages(prompt, response):
    """The conversation, built here independently of rm_jax.data.conversation."""
    msgs = [{"role": "user", "content": None}]
    parts = prompt.split("\n<extra_id_1>")
    msgs[0]["content"] = parts[0]
    for p in parts[1:]:
        role, content = p.split("\n", 1)
        msgs.append({"role": role.lower(), "content": content})
    return msgs + [{"role": "assistant", "content": response}]


def _torch_ids(tok, prompt, response, seq_len=SEQ_LEN):
    """Chat-templated ids as transformers makes them; over-long: cut the prompt from the left, or
    None when the response alone does not fit."""
    msgs = _messages(prompt, response)
    ids = list(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
    if len(ids) <= seq_len:
        return ids
    assert ids[0] != tok.bos_token_id  # this template adds no BOS, so nothing is kept at the front
    plen = len(tok.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True)["input_ids"])
    if len(ids) - plen >= seq_len:
        return None
    return ids[-seq_len:]


def _torch_pred(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.as_tensor([ids], dtype=torch.long)).logits[0].numpy().astype(np.float64)


def _eval(out, model_dir, data, *extra):
    argv = [
        "eval",
        "--model",
        model_dir,
        "--helpsteer",
        data["hs"],
        "--rewardbench",
        data["rb"],
        "--seq-len",
        str(SEQ_LEN),
        "--batch-rows",
        "4",
        "--max-segments",
        "8",
        "--no-progress",
        "--output",
        str(out),
        *extra,
    ]
    assert cli.main(argv) == 0
    with open(out, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def first_eval(tiny_rm, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "results.json"
    return out, _eval(out, tiny_rm[0], data)


# ----------------------------------------------------------------------------- RewardBench


def test_rewardbench_matches_transformers(tiny_rm, data, first_eval):
    _, model, tok = tiny_rm
    out, res = first_eval
    rows = data["rb_rows"]
    w = np.asarray(REWARD_PRESETS["70b-rewardbench"])
    cp = np.stack([_torch_pred(model, _torch_ids(tok, r["prompt"], r["chosen"])) for r in rows])
    rp = np.stack([_torch_pred(model, _torch_ids(tok, r["prompt"], r["rejected"])) for r in rows])
    rc, rr = cp @ w, rp @ w
    assert np.min(np.abs(rc - rr)) > 10 * TOL  # no near-ties, so wins cannot flip within tolerance

    preds = [json.loads(line) for line in open(str(out)[:-5] + ".rewardbench_predictions.jsonl")]
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    assert [p["subset"] for p in preds] == [r["subset"] for r in rows]
    got_c = np.array([[p["chosen"][a] for a in ATTRIBUTES] for p in preds])
    got_r = np.array([[p["rejected"][a] for a in ATTRIBUTES] for p in preds])
    np.testing.assert_allclose(got_c, cp, atol=TOL, rtol=0)
    np.testing.assert_allclose(got_r, rp, atol=TOL, rtol=0)
    np.testing.assert_allclose(got_c @ w, rc, atol=TOL, rtol=0)
    np.testing.assert_array_equal(got_c @ w > got_r @ w, rc > rr)  # the same per-pair wins

    want = score_pairs([r["subset"] for r in rows], rc, rr)
    rb = res["rewardbench"]
    assert rb["subsets"] == pytest.approx(want["subsets"])
    assert (
        rb["unknown_subsets"] == pytest.approx(want["unknown_subsets"]) and "anthropic_helpful" in rb["unknown_subsets"]
    )
    assert rb["sections"] == pytest.approx(want["sections"])
    assert rb["overall"] == pytest.approx(want["overall"])
    assert set(rb["sections"]) == {"chat", "chat_hard", "reasoning"}
    assert res["weights"]["label"] == "70b-rewardbench"
    assert res["counts"]["rewardbench"]["scored"] == len(rows) and res["counts"]["rewardbench"]["dropped"] == 0
    # every preset under the secondary key, each from the same predictions
    assert set(rb["presets"]) == set(REWARD_PRESETS)
    for name, pw in REWARD_PRESETS.items():
        ref = score_pairs([r["subset"] for r in rows], cp @ np.asarray(pw), rp @ np.asarray(pw))
        assert rb["presets"][name]["overall"] == pytest.approx(ref["overall"]), name


# ----------------------------------------------------------------------------- HelpSteer2


def _reference_metrics(pred, labels, present):
    out = {}
    for j, a in enumerate(ATTRIBUTES):
        m = present[:, j]
        p, t = pred[m, j], labels[m, j]
        r = np.clip(np.floor(p + 0.5), 0, 4)
        entry = {"n": int(m.sum())}
        for key, x in (("raw", p), ("rounded", r)):
            mse = float(np.mean((x - t) ** 2))
            d = {
                "mse": mse,
                "rmse": math.sqrt(mse),
                "mae": float(np.mean(np.abs(x - t))),
                "pearson": None if np.all(x == x[0]) else float(stats.pearsonr(x, t)[0]),
                "spearman": None if np.all(x == x[0]) else float(stats.spearmanr(x, t)[0]),
            }
            entry.update(d) if key == "raw" else entry.__setitem__("rounded", d)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 when labels and predictions share one level
            k = cohen_kappa_score(t.astype(int), r.astype(int), weights="quadratic", labels=list(range(5)))
        entry["qwk"] = None if math.isnan(k) else float(k)
        entry["qwk_excluded"] = 0  # every present label here is an integer 0..4
        out[a] = entry
    return out


def _close(got, want):
    for k, v in want.items():
        if isinstance(v, dict):
            _close(got[k], v)
        elif v is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(v, abs=TOL), k


def test_helpsteer_metrics_match_torch_and_scipy(tiny_rm, data, first_eval):
    _, model, tok = tiny_rm
    out, res = first_eval
    rows = data["hs_rows"]
    ids = [_torch_ids(tok, r["prompt"], r["response"]) for r in rows]
    assert ids[11] is None and len(ids[2]) == SEQ_LEN  # one dropped, the long-prompt rows cut
    kept = [i for i, x in enumerate(ids) if x is not None]
    pred = np.stack([_torch_pred(model, ids[i]) for i in kept])
    labels = np.array([[rows[i][a] for a in ATTRIBUTES] for i in kept], np.float64)
    present = labels != -100

    c = res["counts"]["helpsteer"]
    assert (c["rows"], c["scored"], c["dropped"], c["seq_len"]) == (16, 15, 1, SEQ_LEN)
    assert c["truncated"] == sum(
        len(_torch_ids(tok, r["prompt"], r["response"], 10**6)) > SEQ_LEN for r in rows[:11] + rows[12:]
    )
    assert c["truncated"] >= 2

    _close(res["per_attribute"], _reference_metrics(pred, labels, present))

    saved = [json.loads(line) for line in open(str(out)[:-5] + ".helpsteer_predictions.jsonl")]
    assert [s["row"] for s in saved] == kept
    np.testing.assert_allclose(np.array([[s["pred"][a] for a in ATTRIBUTES] for s in saved]), pred, atol=TOL, rtol=0)
    assert saved[8]["label"]["helpfulness"] is None and saved[0]["label"] == {a: rows[0][a] for a in ATTRIBUTES}

    # pairwise: prompts 0..7 are rows (2g, 2g+1); 3 has a label tie, 4 a missing label, 5 a dropped row
    assert set(res["pairwise"]) == set(REWARD_PRESETS)
    for name, pw in REWARD_PRESETS.items():
        reward = dict(zip(kept, pred @ np.asarray(pw)))
        right = n = 0
        for g in (0, 1, 2, 6, 7):
            a, b = 2 * g, 2 * g + 1
            ha, hb = rows[a]["helpfulness"], rows[b]["helpfulness"]
            assert ha != hb
            better, worse = (a, b) if ha > hb else (b, a)
            n += 1
            right += reward[better] > reward[worse]
        got = res["pairwise"][name]
        assert (got["n_pairs"], got["n_correct"], got["n_label_ties"], got["n_skipped_groups"]) == (n, right, 1, 2)
        assert got["accuracy"] == pytest.approx(right / n)


def test_tables_printed(tiny_rm, data, tmp_path, capsys):
    _eval(tmp_path / "r.json", tiny_rm[0], data, "--weights", "helpfulness-only")
    printed = capsys.readouterr().out
    for needle in (
        "helpfulness",
        "pairwise accuracy",
        "* helpfulness-only",
        "(qwk: quadratic-weighted kappa)",
        "[chat]",
        "overall (mean of sections)",
        "anthropic_helpful",
        "results ->",
    ):
        assert needle in printed, needle


# ----------------------------------------------------------------------------- re-weighting


def test_reweight_equals_fresh_evaluation(tiny_rm, data, first_eval, tmp_path, capsys):
    out, _ = first_eval
    custom = "0.2,-0.5,1.5,0.3,-0.7"
    fresh = _eval(tmp_path / "fresh.json", tiny_rm[0], data, "--weights", custom)
    capsys.readouterr()
    for path in (str(out), str(out)[:-5], str(out)[:-5] + ".rewardbench_predictions.jsonl"):
        again = reweight_from_predictions(path, custom)
        for key in ("per_attribute", "pairwise", "weights"):
            _close(again[key], fresh[key])
        for key in ("subsets", "sections", "overall", "unknown_subsets", "presets", "n_pairs"):
            _close({key: again["rewardbench"][key]}, {key: fresh["rewardbench"][key]})
    assert again["model"] == fresh["model"] and again["counts"]["helpsteer"]["truncated"] >= 2

    # through the CLI, without a model; the output is itself a --from-predictions source
    rw = tmp_path / "rw.json"
    assert cli.main(["eval", "--from-predictions", str(out), "--weights", custom, "--output", str(rw)]) == 0
    assert "pairwise accuracy" in capsys.readouterr().out
    saved = json.loads(rw.read_text())
    assert saved["rewardbench"]["overall"] == pytest.approx(fresh["rewardbench"]["overall"], abs=TOL)
    assert saved["weights"]["label"] == "w0.2_-0.5_1.5_0.3_-0.7"
    assert os.path.isfile(tmp_path / "rw.helpsteer_predictions.jsonl")
    assert (
        reweight_from_predictions(str(rw), "goodness")["pairwise"]["goodness"]
        == reweight_from_predictions(str(out), "goodness")["pairwise"]["goodness"]
    )


def test_reweight_one_attribute_predictions(tmp_path):
    """Predictions of a helpfulness-only model: no presets, default weight 1."""
    recs = [
        {"row": i, "group": i // 2, "pred": {"helpfulness": float(p)}, "label": {"helpfulness": h, "correctness": 1}}
        for i, (p, h) in enumerate([(0.1, 1), (0.9, 3), (0.5, 2), (0.4, 4), (0.2, 2), (0.3, 2)])
    ]
    _write_jsonl(tmp_path / "e.helpsteer_predictions.jsonl", recs)
    res = reweight_from_predictions(str(tmp_path / "e.json"))
    assert list(res["pairwise"]) == ["w1"] and list(res["per_attribute"]) == ["helpfulness"]
    assert res["pairwise"]["w1"] == {
        "accuracy": 0.5,
        "n_pairs": 2,
        "n_correct": 1,
        "n_label_ties": 1,
        "n_skipped_groups": 0,
    }
    run = tmp_path / "run"  # a training run folder's predictions/validation.jsonl reads the same
    _write_jsonl((run / "predictions").mkdir(parents=True) or run / "predictions" / "validation.jsonl", recs)
    assert reweight_from_predictions(str(run))["pairwise"] == res["pairwise"]


# ----------------------------------------------------------------------------- bad input


def _fails(argv, capsys, *needles):
    assert cli.main(["eval", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rm-jax eval: error: ")
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_empty_response_named(tmp_path, capsys, field, tiny_rm):
    rows = _rb_rows()
    rows[2][field] = "  "
    f = _write_jsonl(tmp_path / "rb.jsonl", rows)
    _fails(
        ["--model", tiny_rm[0], "--rewardbench", f, "--output", str(tmp_path / "o.json")],
        capsys,
        "rb.jsonl: row 3",
        f"field '{field}'",
        "empty text",
    )
    assert not os.path.exists(tmp_path / "o.json")


def test_duplicate_id_named(tmp_path, capsys, tiny_rm):
    rows = _rb_rows()
    rows[5]["id"] = rows[1]["id"]
    f = _write_jsonl(tmp_path / "rb.jsonl", rows)
    _fails(["--model", tiny_rm[0], "--rewardbench", f], capsys, "row 6", "field 'id'", "duplicate id 101")


def test_bad_weights_named_before_the_model(tmp_path, capsys, data):
    missing_model = str(tmp_path / "no_such_model")  # the weights are checked before the model is touched
    _fails(
        ["--model", missing_model, "--rewardbench", data["rb"], "--weights", "70b-rewardbenhc"],
        capsys,
        "--weights",
        "unknown reward-weight preset '70b-rewardbenhc'",
        "70b-rewardbench",
    )
    _fails(
        ["--model", missing_model, "--helpsteer", data["hs"], "--weights", "1,2,3"],
        capsys,
        "--weights",
        "3 values; expected 5",
    )
    _fails(["--from-predictions", str(tmp_path / "x.json"), "--weights", "nope"], capsys, "--from-predictions")


def test_bad_weights_on_saved_predictions(first_eval, capsys):
    out, _ = first_eval
    _fails(["--from-predictions", str(out), "--weights", "1,2"], capsys, "--weights", "2 values; expected 5")
    _fails(["--from-predictions", str(out), "--weights", "helpful"], capsys, "unknown reward-weight preset")


def test_usage_errors(tmp_path, capsys, data, tiny_rm):
    _fails(["--helpsteer", data["hs"]], capsys, "--model is required")
    _fails(["--model", tiny_rm[0]], capsys, "nothing to evaluate")
    _fails(["--from-predictions", str(tmp_path / "x.json")], capsys, "no saved predictions", "x.helpsteer_predictions")
    _fails(["--model", tiny_rm[0], "--from-predictions", "x.json"], capsys, "do not also give --model")
    _fails(
        ["--model", tiny_rm[0], "--rewardbench", str(tmp_path / "missing.jsonl")],
        capsys,
        "missing.jsonl",
        "no such file",
    )


def test_python_api_cuts_overlong_responses_and_counts_them(tiny_rm, data):
    """Every RewardBench pair is scored: a response longer than seq_len on its own is cut from the left
    (the head reads its end), exactly as transformers scores those last tokens, and counted."""
    from rm_jax.data.sources import load_pairs
    from rm_jax.evaluation.evaluate import evaluate_rewardbench
    from rm_jax.runs.read import load_scoring_model

    _, hf_model, tok = tiny_rm
    rows = load_pairs(data["rb"]).rows
    rows[3]["rejected"] = _text(np.random.default_rng(4), 150, 150)  # longer than seq_len alone
    model = load_scoring_model(tiny_rm[0])
    rep, chosen, rejected = evaluate_rewardbench(model, rows, "goodness", seq_len=SEQ_LEN, progress=False)
    assert not np.isnan(chosen).any() and not np.isnan(rejected).any()
    c = rep["counts"]
    assert (c["scored"], c["dropped"], c["response_cut"]) == (len(rows), 0, 1) and rep["n_pairs"] == len(rows)
    full = list(tok.apply_chat_template(_messages(rows[3]["prompt"], rows[3]["rejected"]), tokenize=True)["input_ids"])
    assert len(full) > SEQ_LEN and full[0] != tok.bos_token_id
    np.testing.assert_allclose(rejected[3], _torch_pred(hf_model, full[-SEQ_LEN:]), atol=TOL, rtol=0)


def test_python_api_drops_and_counts_overlong_pairs_on_request(tiny_rm, data):
    from rm_jax.data.sources import load_pairs
    from rm_jax.evaluation.evaluate import evaluate_rewardbench
    from rm_jax.evaluation.predictions import rewardbench_records
    from rm_jax.runs.read import load_scoring_model

    rows = load_pairs(data["rb"]).rows
    rows[3]["rejected"] = _text(np.random.default_rng(4), 150, 150)  # longer than seq_len alone
    model = load_scoring_model(tiny_rm[0])
    rep, chosen, rejected = evaluate_rewardbench(
        model, rows, "goodness", seq_len=SEQ_LEN, drop_long_pairs=True, progress=False
    )
    assert chosen.shape == rejected.shape == (len(rows), 5)
    assert np.isnan(chosen[3]).all() and not np.isnan(np.delete(chosen, 3, axis=0)).any()
    assert rep["counts"]["dropped"] == 1 and rep["counts"]["scored"] == rep["n_pairs"] == len(rows) - 1
    assert rep["counts"]["response_cut"] == 0
    assert rep["subset_counts"]["mt-bench-med"] == 1  # the dropped pair is in no score
    w = np.asarray(REWARD_PRESETS["goodness"])
    keep = [i for i in range(len(rows)) if i != 3]
    want = score_pairs([rows[i]["subset"] for i in keep], chosen[keep] @ w, rejected[keep] @ w)
    assert rep["overall"] == pytest.approx(want["overall"])
    recs = rewardbench_records(rows, chosen, rejected, model.attributes)
    assert [r["id"] for r in recs] == [rows[i]["id"] for i in keep]


def test_unknown_template_named(capsys, data, tiny_rm):
    _fails(
        ["--model", tiny_rm[0], "--rewardbench", data["rb"], "--template", "chatml"],
        capsys,
        "--template",
        "unknown chat template 'chatml'",
    )


# ----------------------------------------------------------------------------- a LoRA run folder


def _numbers(d, prefix=""):
    """Every number of a results tree, by its dotted path."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _predictions(stem):
    """The per-row and per-pair predictions an eval wrote, as one flat array."""
    vals = []
    for suffix in (".helpsteer_predictions.jsonl", ".rewardbench_predictions.jsonl"):
        for rec in map(json.loads, open(stem + suffix)):
            for key in ("pred", "chosen", "rejected"):
                vals += list(rec.get(key, {}).values())
    return np.asarray(vals)


@pytest.mark.slow  # trains the session's LoRA run (tests/conftest.py), then three evaluations
def test_lora_run_folder_evaluates_as_its_merged_export(lora_rm_run, data, tmp_path, capsys):
    """`rm-jax eval --model RUN` on a LoRA run (adapters applied unmerged) gives the metrics and predictions of
    its merged export (W + A B alpha/r) evaluated the same way, within 1e-4."""
    got = _eval(tmp_path / "run.json", lora_rm_run["run"], data)
    want = _eval(tmp_path / "merged.json", lora_rm_run["merged"], data)
    base = _eval(tmp_path / "base.json", lora_rm_run["base"], data)
    a, b = _numbers({k: v for k, v in got.items() if k != "model"}), _numbers(want)
    assert a and set(a) == set(_numbers({k: v for k, v in want.items() if k != "model"}))
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=TOL), k
    p, q = _predictions(str(tmp_path / "run")), _predictions(str(tmp_path / "merged"))
    assert p.shape == q.shape and p.size > 0
    np.testing.assert_allclose(p, q, atol=TOL, rtol=0)
    assert np.abs(_predictions(str(tmp_path / "base")) - q).max() > 1e-2  # training moved the predictions
    assert base["model"] != got["model"]


@pytest.mark.slow  # the session's LoRA run
def test_lora_merged_export_holds_the_adapters(lora_rm_run):
    """The reference above is the merge itself: its adapted matrices moved away from the base's."""
    from safetensors.numpy import load_file

    base, merged = (load_file(os.path.join(lora_rm_run[k], "model.safetensors")) for k in ("base", "merged"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert np.abs(merged[name] - base[name]).max() > 1e-4


def test_eval_helpsteer_reports_nll_and_ece_of_a_distributional_head(data_files, tmp_path, capsys):
    """`rm-jax eval --helpsteer` on an ordinal export: the results json's nll / ece are metrics.py's level_nll /
    expected_calibration_error of the probabilities `rm-jax score --probs` gives, and the console table shows them."""
    from rm_jax.data.sources import load_helpsteer
    from rm_jax.engine.scoring import score_rows
    from rm_jax.evaluation.metrics import expected_calibration_error, level_nll
    from tests.serving.test_service import _head_model

    model = _head_model(tmp_path, "ordinal")
    out = tmp_path / "res.json"
    argv = ["eval", "--model", str(tmp_path / "ordinal"), "--helpsteer", data_files["validation"]]
    assert cli.main([*argv, "--output", str(out), "--no-progress"]) == 0
    res = json.load(open(out))
    rows = load_helpsteer(data_files["validation"]).rows
    _, _, probs = score_rows(model, rows, progress=False, probs=True)
    for j, a in enumerate(ATTRIBUTES):
        labels = np.asarray([-1 if r[a] is None else r[a] for r in rows])
        present = labels >= 0
        got = res["per_attribute"][a]
        assert got["nll"] == pytest.approx(level_nll(probs[:, j], labels, present), rel=1e-5)
        assert got["ece"] == pytest.approx(expected_calibration_error(probs[:, j], labels, present), abs=1e-5)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("attribute"))
    assert header.split()[-2:] == ["nll", "ece"]
