"""``rm-jax weights fit --gate`` (a prompt-gated weighting, ArmoRM stage 2): the prompt embedding against
transformers, the gate beating the constant fit where the preferred weighting depends on the kind of prompt and
matching it where one weighting holds everywhere (pairs built from a tiny random RM's own predictions), folds
shared with the constant fit, the gate folder as ``--weights`` in ``score`` (rows carry their weights) and
``eval``, and the consumers that cannot apply a gate stopping with one line."""

import json

import numpy as np
import pytest

from rm_jax import cli
from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS, resolve_reward_weights
from rm_jax.core.errors import InputError
from rm_jax.evaluation.gate import GateConfig, _mix, gate_weights, load_gate, prompt_embeddings, prompt_of
from rm_jax.evaluation.gate_fit import fit_gate_params, gate_report, save_gate
from rm_jax.evaluation.weight_fit import fit_report

KIND_WORDS = ("the cat sat on a mat and then it ran far".split(), "away from home because rain fell every roof".split())
RESPONSE_WORDS = KIND_WORDS[0] + KIND_WORDS[1]
BY_KIND = (np.array([1.0, 0, 0, 0, 0]), np.array([0, 0, 0, 0, 1.0]))  # kind 0: helpfulness; kind 1: verbosity
ONE = np.array([0.2, -1.0, 0.5, 0.0, 1.5])  # one weighting for every prompt (signs mixed)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A tiny random RM, 200 prompts of two kinds (disjoint word sets) with two responses each, the RM's own
    predictions of those responses and its embeddings of the prompts."""
    from rm_jax.evaluation.evaluate import predict_conversations
    from rm_jax.runs.read import load_scoring_model
    from tests.helpers import make_hf_rm_with_tokenizer

    d = tmp_path_factory.mktemp("gate")
    make_hf_rm_with_tokenizer("llama", str(d / "rm"), seed=5)
    model = load_scoring_model(str(d / "rm"))
    rng = np.random.default_rng(0)
    convs, kinds = [], []
    for i in range(200):
        prompt = " ".join(rng.choice(KIND_WORDS[i % 2], 5))
        for _ in "ab":
            convs.append({"prompt": prompt, "response": " ".join(rng.choice(RESPONSE_WORDS, int(rng.integers(2, 12))))})
        kinds.append(i % 2)
    pred, _ = predict_conversations(model, convs, 512, True, 16, 16, False)
    emb, counts = prompt_embeddings(model, [prompt_of(convs[2 * i]) for i in range(200)], 512, 16, 16, False)
    n_texts = len({c["prompt"] for c in convs})  # a prompt text may recur: embedded once
    assert counts == {"prompts": 200, "distinct_prompts": n_texts, "truncated_prompts": 0}
    return {"dir": d, "model": model, "convs": convs, "kinds": np.array(kinds), "pred": pred.astype(np.float64),
            "emb": emb}  # fmt: skip


@pytest.fixture(scope="module")
def gate_dir(synthetic, tmp_path_factory):
    """A gate fitted on the synthetic pairs (kind-dependent weighting), saved as a GATE_DIR named ``G``."""
    cfg = GateConfig(steps=150)
    t = fit_gate_params(synthetic["emb"], np.arange(200), _pairs(synthetic, BY_KIND), np.ones(200), 0.01, cfg)
    d = tmp_path_factory.mktemp("gate_dir") / "G"
    save_gate(str(d), {"attributes": list(ATTRIBUTES), "gate": cfg.__dict__}, t)
    return str(d)


def _pairs(s, weightings):
    """Chosen - rejected differences of each prompt's two responses, ordered by its kind's hidden weighting."""
    p, out = s["pred"], []
    for i, k in enumerate(s["kinds"]):
        a, b = p[2 * i], p[2 * i + 1]
        out.append(a - b if a @ weightings[k] > b @ weightings[k] else b - a)
    return np.array(out)


def _report(s, weightings):
    d = _pairs(s, weightings)
    return gate_report(s["emb"], np.arange(200), d, list(ATTRIBUTES), [f"p{i}" for i in range(200)])


def test_prompt_embedding_is_transformers_last_hidden_state_at_the_prompt_end(synthetic):
    """The embedding is HF's last hidden state (after the final norm) at the last token of the prompt rendered
    with the generation prompt; packed several to a row it equals each prompt embedded alone."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rm_jax.data.conversation import encode_prompts

    model = synthetic["model"]
    prompts = [prompt_of(c) for c in synthetic["convs"][:12:2]]
    hf = AutoModelForSequenceClassification.from_pretrained(str(synthetic["dir"] / "rm")).float().eval()
    ids = encode_prompts(model.tokenizer, prompts, model.template)
    with torch.no_grad():
        ref = np.stack(
            [hf(torch.tensor(x[None]).long(), output_hidden_states=True).hidden_states[-1][0, -1].numpy() for x in ids]
        )
    packed, _ = prompt_embeddings(model, prompts, 512, 16, 16, False)
    alone = np.concatenate([prompt_embeddings(model, [p], 512, 1, 1, False)[0] for p in prompts])
    np.testing.assert_allclose(packed, ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(packed, alone, atol=1e-6, rtol=0)
    np.testing.assert_allclose(packed, synthetic["emb"][:6], atol=1e-6, rtol=0)
    assert np.abs(ref[0] - ref[1]).max() > 1e-3  # prompts differ where the gate reads them


def test_gate_beats_the_constant_fit_when_the_weighting_depends_on_the_prompt(synthetic):
    rep, _ = _report(synthetic, BY_KIND)
    gate, const = rep["heldout_accuracy"]["mean"], rep["constant"]["heldout_accuracy"]["mean"]
    assert gate >= const + 0.10, (gate, const)
    assert set(rep["presets"]) == set(REWARD_PRESETS) and all(gate > p["mean"] for p in rep["presets"].values())
    # the gate gives the two kinds different weightings, leaning to each kind's own attribute
    t = fit_gate_params(synthetic["emb"], np.arange(200), _pairs(synthetic, BY_KIND), np.ones(200), 0.01, GateConfig())
    w = gate_weights(t, synthetic["emb"], GateConfig()) * t["attribute_scale"]  # standardised units
    share = np.abs(w) / np.abs(w).sum(1, keepdims=True)
    kinds = synthetic["kinds"]
    assert share[kinds == 0, 0].mean() > share[kinds == 1, 0].mean() + 0.2
    assert share[kinds == 1, 4].mean() > share[kinds == 0, 4].mean() + 0.2


def test_gate_matches_the_constant_fit_when_one_weighting_holds_everywhere(synthetic):
    rep, tensors = _report(synthetic, (ONE, ONE))
    gate, const = rep["heldout_accuracy"]["mean"], rep["constant"]["heldout_accuracy"]["mean"]
    assert const >= 0.9 and abs(gate - const) <= 0.02, (gate, const)
    # the constant fit's signs orient the gate: a negative weight (correctness here) stays negative per prompt
    assert rep["orientation"]["correctness"] == -1.0
    assert (gate_weights(tensors, synthetic["emb"], GateConfig())[:, 1] < 0).all()


def test_folds_and_constant_fit_are_weights_fit_s(synthetic):
    d = _pairs(synthetic, BY_KIND)
    ids = [f"q{i // 2}" for i in range(200)]  # two pairs per prompt id: folds must keep them together
    rep, _ = gate_report(synthetic["emb"], np.arange(200), d, list(ATTRIBUTES), ids, folds=4, seed=3,
                         cfg=GateConfig(steps=20))  # fmt: skip
    const = fit_report(d, ATTRIBUTES, ids, folds=4, seed=3)
    assert rep["folds"] == const["folds"]
    assert rep["constant"]["heldout_accuracy"] == const["heldout_accuracy"] and rep["presets"] == const["presets"]
    assert rep["constant"]["weights"] == pytest.approx(const["weights"])
    assert rep["n_prompts"] == 100 and rep["pair_weighting"] == "prompt"


def test_numpy_gate_is_the_trained_function_and_round_trips(synthetic, tmp_path):
    import jax.numpy as jnp

    cfg = GateConfig(steps=30, hidden=8, layers=3)
    t = fit_gate_params(synthetic["emb"], np.arange(200), _pairs(synthetic, BY_KIND), np.ones(200), 0.01, cfg)
    x = (synthetic["emb"] - t["feature_mean"]) / t["feature_std"]
    jx = np.asarray(_mix({k: jnp.asarray(v) for k, v in t.items()}, jnp.asarray(x), 3, cfg.temperature, jnp))
    w = gate_weights(t, synthetic["emb"], cfg)
    np.testing.assert_allclose(w, jx * t["orientation"] / t["attribute_scale"], rtol=1e-4)
    assert (w * t["orientation"] >= 0).all()
    save_gate(str(tmp_path / "g"), {"attributes": list(ATTRIBUTES), "gate": cfg.__dict__}, t)
    g = load_gate(str(tmp_path / "g"))
    np.testing.assert_allclose(g.weights(synthetic["emb"]), w, rtol=1e-6)
    order = list(reversed(ATTRIBUTES))
    np.testing.assert_allclose(g.weights(synthetic["emb"], order), w[:, ::-1], rtol=1e-6)
    with pytest.raises(InputError, match="wide prompt embeddings"):
        g.weights(np.zeros((2, 3)))
    with pytest.raises(InputError, match="the gate weighs"):
        g.weights(synthetic["emb"], ["helpfulness"])
    # a gate folder is never read as a constant vector
    with pytest.raises(ValueError, match="prompt gate"):
        resolve_reward_weights(str(tmp_path / "g"), ATTRIBUTES)
    from safetensors.numpy import save_file

    save_file({**t, "out.bias": np.zeros(3, np.float32)}, str(tmp_path / "g" / "gate.safetensors"))
    with pytest.raises(InputError, match="out.bias"):
        load_gate(str(tmp_path / "g"))


def test_fit_gate_cli_then_score_and_eval_with_the_gate(synthetic, tmp_path, capsys):
    s = synthetic
    d, convs, pred = s["dir"], s["convs"], s["pred"]
    pairs = []
    for i, k in enumerate(s["kinds"]):
        a, b = 2 * i, 2 * i + 1
        c, r = (a, b) if pred[a] @ BY_KIND[k] > pred[b] @ BY_KIND[k] else (b, a)
        pairs.append({"prompt": convs[a]["prompt"], "chosen": convs[c]["response"], "rejected": convs[r]["response"],
                      "subset": "alpacaeval-easy"})  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    gate_dir = tmp_path / "G"
    argv = ["weights", "fit", "--model", str(d / "rm"), "--pairs", str(tmp_path / "pairs.jsonl"), "--gate"]
    assert cli.main(argv + ["--output", str(gate_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    g = json.loads((gate_dir / "gate.json").read_text())
    assert (gate_dir / "gate.safetensors").is_file() and (gate_dir / "fit_predictions.jsonl").is_file()
    assert g["heldout_accuracy"]["mean"] >= g["constant"]["heldout_accuracy"]["mean"] + 0.10
    assert (
        set(g["presets"]) == set(REWARD_PRESETS)
        and g["n_pairs"] == 200
        and g["hidden_size"] == s["model"].cfg.hidden_size
    )
    assert "constant fit" in printed and "gate" in printed

    # --weights GATE_DIR in score: each row's reward is its own weights . attributes, weights by prompt kind
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(c) + "\n" for c in convs[:40]))
    out = tmp_path / "scored.jsonl"
    argv = ["score", "--model", str(d / "rm"), "--input", str(rows), "--output", str(out), "--weights", str(gate_dir)]
    assert cli.main(argv + ["--no-progress"]) == 0
    scored = [json.loads(line) for line in open(out)]
    w = np.array([[r["weights"][a] for a in ATTRIBUTES] for r in scored])
    att = np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in scored])
    np.testing.assert_allclose([r["reward"] for r in scored], (w * att).sum(1), rtol=1e-6, atol=1e-9)
    emb = s["emb"][:20].repeat(2, axis=0)  # rows 2i and 2i+1 share prompt i
    np.testing.assert_allclose(w, load_gate(str(gate_dir)).weights(emb), rtol=1e-4, atol=1e-8)
    assert not np.allclose(w[0], w[2], rtol=0.05)  # a kind-0 and a kind-1 prompt weigh differently

    # --weights GATE_DIR in eval (RewardBench pairs): the gate's accuracy is that of its per-pair weights
    res = tmp_path / "res.json"
    argv = ["eval", "--model", str(d / "rm"), "--rewardbench", str(tmp_path / "pairs.jsonl"), "--output", str(res)]
    assert cli.main(argv + ["--weights", str(gate_dir), "--no-progress"]) == 0
    r = json.loads(res.read_text())
    gw = load_gate(str(gate_dir)).weights(s["emb"])
    diff = np.array([pred[2 * i] - pred[2 * i + 1] for i in range(200)])
    sign = np.array(
        [1 if pred[2 * i] @ BY_KIND[k] > pred[2 * i + 1] @ BY_KIND[k] else -1 for i, k in enumerate(s["kinds"])]
    )
    expected = np.mean(((gw * diff).sum(1) * sign) > 0)
    assert r["weights"]["kind"] == "gate" and r["weights"]["label"] == "G"
    assert r["rewardbench"]["presets"]["G"]["overall"] == pytest.approx(r["rewardbench"]["overall"])
    assert r["rewardbench"]["overall"] == pytest.approx(expected, abs=1e-9) and expected >= 0.9
    assert set(REWARD_PRESETS) <= set(r["rewardbench"]["presets"])


def test_gate_needs_the_model_and_consumers_that_cannot_apply_it_stop(synthetic, tmp_path, capsys):
    from rm_jax.evaluation.evaluate import reweight_from_predictions

    argv = ["weights", "fit", "--from-predictions", str(tmp_path / "x.jsonl"), "--gate", "--output", str(tmp_path)]
    assert cli.main(argv) == 1
    assert "--gate reads the RM's prompt embeddings" in capsys.readouterr().err
    t = fit_gate_params(synthetic["emb"], np.arange(200), _pairs(synthetic, BY_KIND), np.ones(200), 0.01,
                        GateConfig(steps=2))  # fmt: skip
    save_gate(str(tmp_path / "G"), {"attributes": list(ATTRIBUTES), "gate": GateConfig(steps=2).__dict__}, t)
    with pytest.raises(InputError, match="--from-predictions: saved predictions hold no prompt embeddings"):
        reweight_from_predictions(str(tmp_path / "res.json"), str(tmp_path / "G"))
    for spec in (str(tmp_path / "G"), str(tmp_path / "G") + "/"):  # serve, steer, sweeps, configs: one line
        with pytest.raises(ValueError, match="are a prompt gate .* needs one constant weight vector"):
            resolve_reward_weights(spec, ATTRIBUTES)


def test_eval_cli_yardstick_with_a_gate_writes_each_response_s_weights(synthetic, gate_dir, tmp_path):
    res = tmp_path / "res.json"
    argv = ["eval", "--model", str(synthetic["dir"] / "rm"), "--judgebench", "bundled", "--weights", gate_dir]
    assert cli.main(argv + ["--output", str(res), "--no-progress"]) == 0
    r = json.loads(res.read_text())
    assert r["weights"]["kind"] == "gate" and r["judgebench"]["presets"]["G"] == r["judgebench"]["overall"]
    recs = [json.loads(line) for line in open(tmp_path / "res.judgebench_scores.jsonl")]
    assert len(recs) == 2 * r["judgebench"]["pairs"]
    for rec in recs:
        assert rec["reward"] == pytest.approx(sum(rec["weights"][a] * rec["attributes"][a] for a in ATTRIBUTES))


def _prompt_messages(prompt):
    from rm_jax.data.conversation import split_prompt

    return split_prompt(prompt) if isinstance(prompt, str) else list(prompt)


@pytest.mark.parametrize("name", ["rm_bench", "judgebench", "helpsteer3"])
def test_yardsticks_with_a_gate_weigh_each_response_by_its_prompt(synthetic, gate_dir, name):
    """RM-Bench / JudgeBench / HelpSteer3 with --weights GATE_DIR: against numpy on the records' attributes and
    the gate applied to each row's own prompt embedding (one per row, repeated over its responses), scored by
    the benchmark's rule (theirs for RM-Bench and JudgeBench); every preset beside the gate, named G."""
    from rm_jax.evaluation.yardsticks import evaluate_yardstick, load_yardstick
    from tests.evaluation.test_judgebench import _theirs as their_judgebench_metric
    from tests.evaluation.test_rm_bench import _their_compute_accuracy

    model = synthetic["model"]
    data = load_yardstick(name, "bundled")
    if name == "helpsteer3":
        data.rows = data.rows[:16]
        rows, prompts, per = data.rows, [r["prompt"] for r in data.rows], 2
    else:
        data = rows = data[:12]
        prompts, per = [getattr(r, "prompt", None) or r.question for r in rows], 6 if name == "rm_bench" else 2
    report, records = evaluate_yardstick(model, name, data, gate_dir, progress=False, batch_rows=4)
    emb, _ = prompt_embeddings(model, [_prompt_messages(p) for p in prompts], 512, 4, 16, False)
    w = np.repeat(load_gate(gate_dir).weights(emb), per, axis=0)
    assert np.ptp(w, axis=0).max() > 0.05 * np.abs(w).max()  # prompts get different weights: a row mix-up shows
    att = np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in records])
    rec_w = np.array([[r["weights"][a] for a in ATTRIBUTES] for r in records])
    np.testing.assert_allclose(rec_w, w, rtol=1e-4, atol=1e-8)
    reward = (att * w).sum(1)
    np.testing.assert_allclose([r["reward"] for r in records], reward, rtol=1e-4, atol=1e-7)
    head = "accuracy" if name == "helpsteer3" else "overall"
    if name == "rm_bench":
        theirs = _their_compute_accuracy(
            [
                {"domain": r.domain, "score_chosen": list(s[:3]), "score_rejected": list(s[3:])}
                for r, s in zip(rows, reward.reshape(-1, 6))
            ]  # fmt: skip
        )
        assert report["overall"] == pytest.approx(theirs["total_avg_acc"], abs=1e-9)
        assert (report["hard"], report["normal"], report["easy"]) == pytest.approx(
            (theirs["hard_acc"], theirs["normal_acc"], theirs["easy_acc"]), abs=1e-9
        )
    elif name == "judgebench":
        ab = reward.reshape(-1, 2)
        recs = [{"source": p.source, "label": p.label, "judgments": [{"decision": "A>B" if a > b else "B>A"}]}
                for p, (a, b) in zip(rows, ab)]  # fmt: skip
        assert 100 * report["overall"] == pytest.approx(their_judgebench_metric(recs, lambda x: True), abs=1e-9)
    else:
        cr = reward.reshape(-1, 2)
        assert report["accuracy"] == pytest.approx(np.mean(cr[:, 0] > cr[:, 1]), abs=1e-9)
    assert report["presets"]["G"] == report[head] and set(report["presets"]) == set(REWARD_PRESETS) | {"G"}
    again, again_records = evaluate_yardstick(model, name, data, "helpfulness-only", progress=False, batch_rows=4)
    assert report["presets"]["helpfulness-only"] == again[head]  # presets are still the constant weightings
    assert all("weights" not in r for r in again_records) and "_gate_row_weights" not in report
