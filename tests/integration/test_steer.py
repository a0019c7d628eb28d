"""SteerLM 2.0 end to end on tiny random models: sampling, labelling into NeMo-Aligner's format (every
log-probability checked against its definition), training on the groups (resume gives the same losses),
attribute-following evaluation, and bad input named by file, line and field."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rm_jax.cli import main
from rm_jax.data.conversation import parse_attribute_label, row_to_messages, with_label
from rm_jax.data.steer_groups import load_groups
from tests.helpers import make_hf_causal_lm_with_tokenizer, make_hf_rm_with_tokenizer

pytestmark = pytest.mark.slow  # end to end: trains or spawns processes

SIGMA = "0.8,0.9,0.6,0.7,0.75"
TARGETS = ["helpfulness:4,verbosity:0", "helpfulness:3,complexity:2,verbosity:4"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("steer")
    make_hf_rm_with_tokenizer("llama", str(d / "rm"))
    make_hf_causal_lm_with_tokenizer("llama", str(d / "policy"), seed=1)
    make_hf_causal_lm_with_tokenizer("qwen2", str(d / "sft"), seed=2)
    prompts = d / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"prompt": "What is 2 plus 2?"},
                {"prompt": "Name a colour."},
                {
                    "messages": [
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello"},
                        {"role": "user", "content": "Tell me a fact."},
                    ]
                },
            ]
        )
    )
    return {k: str(d / k) for k in ("rm", "policy", "sft")} | {"prompts": str(prompts), "dir": str(d)}


@pytest.fixture(scope="module")
def labelled(models):
    from rm_jax.steer.label import label_samples
    from rm_jax.steer.sample import sample_prompts

    samples, groups = os.path.join(models["dir"], "samples.jsonl"), os.path.join(models["dir"], "groups.jsonl")
    rep = sample_prompts(models["policy"], models["prompts"], samples, n=3, targets=TARGETS, max_new_tokens=10, seed=4)
    rows = [json.loads(x) for x in open(samples)]
    assert rep == {
        "prompts": 3,
        "groups": 6,
        "responses": 18,
        "unfinished": sum(not f for r in rows for f in r["finished"]),
        "sampling": {"temperature": 1.0, "top_p": 1.0, "seed": 4, "max_new_tokens": 10},
    }
    assert all(r["sampling"] == rep["sampling"] for r in rows)
    assert all(len(r["finished"]) == 3 for r in rows)
    label_samples(samples, models["policy"], models["rm"], groups, sft=models["sft"], sigma=SIGMA, progress=False)
    return samples, groups


def test_labels_follow_their_definitions(models, labelled):
    from rm_jax.engine.scoring import score_rows
    from rm_jax.policy import load_policy, response_logprobs
    from rm_jax.runs.read import load_scoring_model
    from rm_jax.steer.attribute_model import log_p_attributes, resolve_sigma

    samples, groups_path = labelled
    groups = load_groups(groups_path)
    rows = [json.loads(x) for x in open(samples)]
    assert len(groups) == 6 and all(len(g.responses) == 3 for g in groups)
    pol, sft = load_policy(models["policy"]), load_policy(models["sft"])
    rm = load_scoring_model(models["rm"])
    sigma = resolve_sigma(models["rm"], SIGMA)
    for row, g in zip(rows, groups):
        assert g.label == row["attributes"] and g.responses == row["responses"]
        assert g.response_ids == row["response_ids"]  # the tokens drawn, scored and carried for training
        prompt = row_to_messages(
            {**{k: row[k] for k in ("prompt", "messages") if k in row}, "response": "x"}
            if "prompt" in row
            else {"messages": row["messages"] + [{"role": "assistant", "content": "x"}]}
        )[:-1]
        convs = [prompt + [{"role": "assistant", "content": y}] for y in g.responses]
        pred, _ = score_rows(rm, [{"messages": c} for c in convs], progress=False)
        # rtol, not atol: the labeller scored every group in one batch, this scores one group, so the float32
        # RM scores differ in the last bits and log p(a) (~ -50 here) carries that relative error; a wrong sigma,
        # label or response order moves it by whole units.
        np.testing.assert_allclose(
            g.log_pa, log_p_attributes(pred, parse_attribute_label(g.label), sigma), rtol=1e-5, atol=1e-6
        )
        q, _ = response_logprobs(pol, [with_label(c, g.label) for c in convs], response_ids=g.response_ids)
        p, _ = response_logprobs(sft, convs, response_ids=g.response_ids)  # the same tokenizer: the same ids
        np.testing.assert_allclose(g.log_q, q, atol=1e-4)
        np.testing.assert_allclose(g.log_py, p, atol=1e-4)
        assert abs(g.weights.sum() - 1) < 1e-9
    assert groups[4].prompt[0] == {"role": "user", "content": "Hi"} and len(groups[4].prompt) == 3  # prompt 3, target 1


def test_without_sft_the_policy_without_its_label_stands_in(models, labelled, tmp_path, capsys):
    samples, _ = labelled
    out = tmp_path / "g.jsonl"
    assert (
        main(
            [
                "steer",
                "label",
                "--policy",
                models["policy"],
                "--rm",
                models["rm"],
                "--input",
                samples,
                "--output",
                str(out),
                "--sigma",
                SIGMA,
                "--no-progress",
            ]
        )
        == 0
    )
    assert "the sampling policy without the label" in capsys.readouterr().out
    from rm_jax.policy import load_policy, response_logprobs

    g = load_groups(str(out))[0]
    pol = load_policy(models["policy"])
    convs = [
        [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": y}] for y in g.responses
    ]
    np.testing.assert_allclose(g.log_py, response_logprobs(pol, convs, response_ids=g.response_ids)[0], atol=1e-4)


@pytest.mark.parametrize(
    "row, field, needle",
    [
        ({"prompt": "q", "attributes": "verbosity:1", "responses": ["a"]}, "responses", "at least 2 responses"),
        ({"prompt": "q", "responses": ["a", "b"]}, "attributes", "missing"),
        ({"prompt": "q", "attributes": "verbosity:9", "responses": ["a", "b"]}, "attributes", "not an integer 0-4"),
        ({"prompt": "q", "attributes": "humor:1", "responses": ["a", "b"]}, "attributes", "unknown attribute"),
        ({"prompt": "q", "attributes": "verbosity:1", "responses": ["a", " "]}, "responses[1]", "empty"),
        # HelpSteer2 columns are not the label the responses were sampled under (generate reads "attributes" only)
        ({"prompt": "q", "helpfulness": 3, "verbosity": 1, "responses": ["a", "b"]}, "attributes", "sampled under"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "r"},
                ],
                "attributes": "verbosity:1",
                "responses": ["a", "b"],
            },
            "messages",
            "role 'system' in turn 1",
        ),
        (
            {"prompt": "q", "attributes": "verbosity:1", "responses": ["a", "b"], "finished": [True]},
            "finished",
            "one true/false per response",
        ),
        # found only when a model reads it: still named by line and response
        (
            {"prompt": "q", "attributes": "verbosity:1", "responses": ["a", "word " * 1100]},
            "responses[1]",
            "more than the limit of 1024",
        ),
    ],
)
def test_bad_samples_are_named(models, tmp_path, capsys, row, field, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "ok", "attributes": "verbosity:1", "responses": ["a", "b"]})
        + "\n"
        + json.dumps(row)
        + "\n"
    )
    assert (
        main(
            [
                "steer",
                "label",
                "--policy",
                models["policy"],
                "--rm",
                models["rm"],
                "--input",
                str(bad),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--sigma",
                SIGMA,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"{bad}: line 2, field '{field}'" in err and needle in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_empty_and_cut_off_responses_skipped_on_request(models, tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        json.dumps(
            {
                "prompt": "ok",
                "attributes": "verbosity:1",
                "responses": ["a", "", "b", "c"],
                "finished": [True, True, True, False],
            }
        )
        + "\n"
        + json.dumps({"prompt": "no", "attributes": "verbosity:1", "responses": ["", "c"]})
        + "\n"
    )
    out = tmp_path / "g.jsonl"
    args = [
        "steer",
        "label",
        "--policy",
        models["policy"],
        "--rm",
        models["rm"],
        "--input",
        str(samples),
        "--output",
        str(out),
        "--sigma",
        SIGMA,
        "--skip-empty",
        "--no-progress",
    ]
    assert main(args) == 0
    got = capsys.readouterr()
    assert "skipped 2 empty responses, 1 groups left with fewer than 2" in got.out
    assert "1 labelled responses were cut off" in got.err  # kept, but said
    groups = load_groups(str(out))
    assert len(groups) == 1 and groups[0].responses == ["a", "b", "c"]
    assert main(args + ["--skip-unfinished"]) == 0
    got = capsys.readouterr()
    assert "skipped 2 empty responses, 1 cut-off responses, 1 groups left with fewer than 2" in got.out
    assert "cut off" not in got.err
    assert load_groups(str(out))[0].responses == ["a", "b"]


def test_a_leading_system_message_becomes_the_system_field_even_empty(models, tmp_path):
    from rm_jax.steer.label import label_samples

    samples = tmp_path / "s.jsonl"
    rows = [
        {
            "messages": [{"role": "system", "content": sys_}, {"role": "user", "content": "Hi"}],
            "attributes": "verbosity:1",
            "responses": ["a", "b"],
        }
        for sys_ in ("", "Be brief.")
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    label_samples(str(samples), models["policy"], models["rm"], str(tmp_path / "g.jsonl"), sigma=SIGMA, progress=False)
    groups = load_groups(str(tmp_path / "g.jsonl"))
    assert [g.system for g in groups] == ["", "Be brief."]
    assert all(g.prompt == [{"role": "user", "content": "Hi"}] for g in groups)


def test_sampling_under_own_labels_keeps_each_prompt_label_pair(tmp_path):
    from rm_jax.steer.prompts import read_prompts

    f = tmp_path / "p.jsonl"
    f.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"prompt": "Name a colour.", "attributes": "verbosity:0"},
                {"prompt": "Name a colour.", "attributes": "verbosity:4"},
                {"prompt": "Name a colour.", "attributes": "verbosity:0"},
                {"prompt": "Name a fruit.", "helpfulness": 2},
            ]
        )
    )
    assert [p.label for p in read_prompts(str(f), by_label=True)] == ["verbosity:0", "verbosity:4", "helpfulness:2"]
    assert len(read_prompts(str(f))) == 2  # eval and targets: one per distinct prompt
    assert len(read_prompts(str(f), limit=2, by_label=True)) == 2


def test_sigma_is_required_when_the_rm_has_no_validation_rmse(models, labelled, tmp_path, capsys):
    assert (
        main(
            [
                "steer",
                "label",
                "--policy",
                models["policy"],
                "--rm",
                models["rm"],
                "--input",
                labelled[0],
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 1
    )
    assert "records no per-attribute validation RMSE" in capsys.readouterr().err


def test_steer_eval_reports_what_it_measured(models, tmp_path):
    from rm_jax.engine.scoring import score_rows
    from rm_jax.runs.read import load_scoring_model

    out = tmp_path / "ev"
    assert (
        main(
            [
                "steer",
                "eval",
                "--policy",
                models["policy"],
                "--rm",
                models["rm"],
                "--input",
                models["prompts"],
                "--targets",
                *TARGETS,
                "--k",
                "2",
                "--max-new-tokens",
                "8",
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads((out / "steer_eval.json").read_text())
    assert set(res["mean_abs_error"]) == {"helpfulness", "complexity", "verbosity", "mean"}
    assert res["prompts"] == 3 and res["k"] == 2 and len(res["per_target"]) == 2 and "70b-card" in res["reward"]
    # Recompute from the saved samples: the same RM, the same errors.
    rows = [json.loads(x) for x in (out / "steer_samples.jsonl").read_text().splitlines()]
    rm = load_scoring_model(models["rm"])
    errs = {"helpfulness": [], "complexity": [], "verbosity": []}
    for r in rows:
        base = {k: r[k] for k in ("prompt", "messages") if k in r}
        msgs = [
            row_to_messages(
                {**base, "response": y}
                if "prompt" in base
                else {"messages": base["messages"] + [{"role": "assistant", "content": y}]}
            )
            for y in r["responses"]
        ]
        pred, _ = score_rows(rm, [{"messages": m} for m in msgs], progress=False)
        for a, lv in parse_attribute_label(r["attributes"]).items():
            errs[a] += list(np.abs(pred[:, rm.attributes.index(a)] - lv))
    for a, e in errs.items():
        assert res["mean_abs_error"][a] == pytest.approx(np.mean(e), abs=1e-5)
    assert (out / "steer_eval.md").exists() and (out / "steer_eval.png").stat().st_size > 1000


@pytest.mark.slow
def test_steerlm2_training_resumes_exactly(models, labelled, tmp_path, capfd):
    import shutil

    from rm_jax.core.config import build_config
    from rm_jax.training.run import train
    from tests.helpers import (
        assert_resumed_not_restarted,
        assert_states_equal,
        checkpoint_state,
        checkpoint_steps,
        metrics_lines,
    )

    _, groups = labelled
    base = {
        "task": "steerlm2",
        "run_dir": str(tmp_path / "run"),
        "model": {"path": models["policy"]},
        "data": {"train": groups, "validation": groups, "seq_len": 256, "max_segments": 8},
        "train": {
            "max_steps": 6,
            "batch_rows": 2,
            "lr": 1e-3,
            "warmup_steps": 1,
            "log_every": 1,
            "eval_every": 3,
            "eval_rows": 2,
        },
        "checkpoint": {"every_steps": 2, "keep_latest": 3, "keep_best": 0},
        "mesh": {"num_devices": 1, "data": 1},
        "logging": {"progress": False, "tensorboard": False},
    }
    rd = train(build_config(base))

    def losses():
        recs = [json.loads(x) for x in open(os.path.join(rd, "metrics.jsonl"))]
        return {r["step"]: (r["loss"], r["kl_w_b"]) for r in recs if "loss" in r}

    first = losses()
    assert sorted(first) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(v).all() for v in first.values())
    ev = json.load(open(os.path.join(rd, "eval.json")))
    assert {"val_loss", "val_kl_w_b", "val_groups"} <= set(ev) and ev["val_groups"] == 6
    saved = {s: checkpoint_state(rd, s) for s in (4, 6)}
    for step in ("4", "6"):  # back to the step-3 checkpoint (3 evaluated, 2 rotated out), as after a pre-emption
        shutil.rmtree(os.path.join(rd, "checkpoints", step))
    os.remove(os.path.join(rd, "DONE"))
    assert checkpoint_steps(rd) == [3]
    before = metrics_lines(rd)
    capfd.readouterr()
    train(build_config(base))
    assert_resumed_not_restarted(before, metrics_lines(rd), capfd.readouterr().err, 3, 6)
    again = losses()
    for s in range(4, 7):
        assert again[s][0] == pytest.approx(first[s][0], rel=1e-5) and again[s][1] == pytest.approx(
            first[s][1], rel=1e-4
        )
    for s in (4, 6):  # what the resumed run saved is what the uninterrupted one saved
        assert_states_equal(saved[s], checkpoint_state(rd, s), f"steerlm2 step {s}", atol=1e-5)


@pytest.mark.slow
def test_steerlm2_fits_the_importance_weights_on_a_repeated_batch(models, labelled, tmp_path):
    """Every step sees the same 6 groups (one batch per epoch): the policy's baseline b = softmax(log Q_theta -
    log Q') moves towards the target weights w, so KL(w || b), which the loss's gradient lowers, falls."""
    from rm_jax.core.config import build_config
    from rm_jax.training.run import train

    _, groups = labelled
    cfg = {
        "task": "steerlm2",
        "run_dir": str(tmp_path / "run"),
        "model": {"path": models["policy"]},
        "data": {"train": groups, "validation": None, "seq_len": 256, "max_segments": 8},
        # lr 1e-2 overshoots at step 2 on these groups (KL 0.93 -> 4.1) and ends near half its start
        "train": {"max_steps": 8, "batch_rows": 6, "lr": 5e-3, "warmup_steps": 1, "log_every": 1},
        "checkpoint": {"keep_best": 0},
        "mesh": {"num_devices": 1, "data": 1},
        "logging": {"progress": False, "tensorboard": False},
    }
    rd = train(build_config(cfg))
    recs = [json.loads(x) for x in open(os.path.join(rd, "metrics.jsonl"))]
    steps = [r for r in recs if "loss" in r]
    epochs = [r["epoch"] for r in steps]
    assert len(steps) == 8 and np.all(np.diff(epochs) == 1), epochs  # one batch per epoch: the same groups
    kl = [r["kl_w_b"] for r in steps]
    assert all(np.isfinite(kl)) and kl[0] > 0
    assert kl[-1] < 0.5 * kl[0], kl


def test_log_q_is_scored_under_the_sampling_distribution(models, tmp_path, capsys):
    """Acceptance: `lm generate --temperature 0.5 --top-p 0.8` rows record their settings and the token ids
    drawn, and `steer label` writes log Q' of those ids under that distribution: ALL finished samples of a
    byte-level policy are labelled, though most stop inside a multi-byte character (their text re-encodes to
    other tokens); log Q' equals numpy's tempered nucleus log-prob on transformers' logits of prompt + ids,
    and differs from the plain log-prob. A row without settings among rows with them is refused by name, and
    so is an unknown setting."""
    from rm_jax.data.conversation import encode_prompts, encode_responses
    from rm_jax.policy import load_policy, response_logprobs
    from tests.helpers import make_hf_causal_lm_that_ends_turns
    from tests.policy.test_logprob import _numpy_sampled_logprob

    label, questions = "helpfulness:4,verbosity:1", ("Name a colour.", "What is 2 plus 2?")
    pol_dir = str(tmp_path / "ending")
    convs = [with_label([{"role": "user", "content": q}], label) for q in questions]
    model, tok = make_hf_causal_lm_that_ends_turns(pol_dir, prompts=convs, byte_tokens=True)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "attributes": label}) + "\n" for q in questions))
    samples, groups = tmp_path / "s.jsonl", tmp_path / "g.jsonl"
    gen = ["lm", "generate", "--model", pol_dir, "--input", str(prompts), "--output", str(samples)]
    gen += ["--n", "4", "--temperature", "0.5", "--top-p", "0.8", "--max-new-tokens", "16", "--seed", "3"]
    assert main(gen + ["--no-progress"]) == 0
    rows = [json.loads(x) for x in open(samples)]
    want = {"temperature": 0.5, "top_p": 0.8, "seed": 3, "max_new_tokens": 16}
    assert all(r["sampling"] == want for r in rows) and '"top_p": 0.8' in capsys.readouterr().out
    finished, round_trips = [], 0  # (prompt, text, ids drawn) of the finished responses
    for r, c in zip(rows, convs):
        for y, ids, f in zip(r["responses"], r["response_ids"], r["finished"]):
            if f and y.strip():
                finished.append((r["prompt"], y, ids))
                again, st = encode_responses(tok, [c + [{"role": "assistant", "content": y}]])
                round_trips += again[0][st[0] :].tolist() == ids
    assert len(finished) >= 6 and round_trips <= len(finished) - 3  # most texts re-encode to other tokens
    cmd = ["steer", "label", "--policy", pol_dir, "--rm", models["rm"], "--sigma", SIGMA, "--no-progress"]
    cmd += ["--skip-empty", "--skip-unfinished", "--input", str(samples), "--output", str(groups)]
    assert main(cmd) == 0
    assert "log Q' under the sampling distribution: temperature 0.5 top-p 0.8" in capsys.readouterr().out
    pol = load_policy(pol_dir)
    got = load_groups(str(groups))
    labelled = [(g.prompt[-1]["content"], y, ids) for g in got for y, ids in zip(g.responses, g.response_ids)]
    assert sorted(labelled) == sorted(finished)  # every finished sample with the ids drawn, none refused
    import torch

    for g in got:
        conv = with_label(g.prompt, g.label)
        p = encode_prompts(tok, [conv])[0]
        want_q = []
        for ids in g.response_ids:
            x = np.concatenate([p, ids])
            with torch.no_grad():
                logits = model(input_ids=torch.as_tensor(x[None].astype(np.int64))).logits[0].numpy()
            want_q.append(_numpy_sampled_logprob(logits[len(p) - 1 : -1], x[len(p) :], 0.5, 0.8))
        np.testing.assert_allclose(g.log_q, want_q, atol=1e-4)
        full = [conv + [{"role": "assistant", "content": y}] for y in g.responses]
        plain, _ = response_logprobs(pol, full, response_ids=g.response_ids)
        assert np.all(np.isfinite(g.log_q)) and np.abs(g.log_q - plain).min() > 1e-2

    rows[1].pop("sampling")
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(cmd) == 1
    err = capsys.readouterr().err
    assert f"{samples}: line 2, field 'sampling': missing, while {samples}: line 1 records" in err
    rows[1]["sampling"] = {**want, "top_k": 40}
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(cmd) == 1
    assert f"{samples}: line 2, field 'sampling.top_k': unknown setting" in capsys.readouterr().err


def test_first_steerlm2_step_reproduces_the_labels_log_q(models, labelled, tmp_path):
    """At the first step the policy is Q' itself, so the trainer's baseline b = softmax(log Q_theta - log Q') is
    uniform and the logged kl_w_b is KL(w || uniform) averaged over the groups: the trainer scores exactly the
    tokens, with the label, that `steer label` scored. (All 6 groups fit the first batch.)"""
    from rm_jax.core.config import build_config
    from rm_jax.training.run import train

    _, groups_path = labelled
    base = {
        "task": "steerlm2",
        "run_dir": str(tmp_path / "run"),
        "model": {"path": models["policy"]},
        "data": {"train": groups_path, "validation": None, "seq_len": 256, "max_segments": 8, "shuffle": False},
        "train": {"max_steps": 1, "batch_rows": 8, "lr": 1e-3, "warmup_steps": 1, "log_every": 1},
        "checkpoint": {"every_steps": 0, "keep_latest": 1, "keep_best": 0},
        "mesh": {"num_devices": 1, "data": 1},
        "logging": {"progress": False, "tensorboard": False},
    }
    rd = train(build_config(base))
    first = [json.loads(x) for x in open(os.path.join(rd, "metrics.jsonl")) if '"loss"' in x][0]
    groups = load_groups(groups_path)
    want = np.mean([np.sum(g.weights * np.log(g.weights * len(g.weights))) for g in groups])
    assert want > 0.05  # far from uniform weights, so a wrong log Q_theta would show
    assert first["step"] == 1 and first["kl_w_b"] == pytest.approx(want, abs=2e-3)
    # The effective sample size of w per group, 1 / sum(w^2), reaches metrics.jsonl: in [1, group size].
    ess = [1.0 / np.sum(g.weights**2) for g in groups]
    assert first["ess_w_mean"] == pytest.approx(np.mean(ess), rel=1e-4)
    assert first["ess_w_min"] == pytest.approx(np.min(ess), rel=1e-4)


def test_uneven_groups_are_named_and_equal_groups_makes_them_nemo_safe(models, tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        json.dumps({"prompt": "ok", "attributes": "verbosity:1", "responses": ["a", "b", "c"]})
        + "\n"
        + json.dumps({"prompt": "no", "attributes": "verbosity:1", "responses": ["d", "", "e"]})
        + "\n"
    )
    out = tmp_path / "g.jsonl"
    args = ["steer", "label", "--policy", models["policy"], "--rm", models["rm"], "--input", str(samples)]
    args += ["--output", str(out), "--sigma", SIGMA, "--skip-empty", "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"note: {samples}: line 2 holds 2 responses, while the largest groups hold 3" in err
    assert [len(g.responses) for g in load_groups(str(out))] == [3, 2]
    assert main(args + ["--equal-groups", "drop"]) == 0
    assert "1 groups dropped" in capsys.readouterr().out
    assert [g.responses for g in load_groups(str(out))] == [["a", "b", "c"]]
    assert main(args + ["--equal-groups", "fill"]) == 0
    assert "holds 2 responses" not in capsys.readouterr().err
    got = load_groups(str(out))
    assert [g.responses for g in got] == [["a", "b", "c"], ["d", "e", "d"]]
    assert got[1].log_q[0] == got[1].log_q[2]  # the repeat is the same response, labelled the same


def test_rows_that_cannot_be_scored_stop_by_name_or_are_skipped_and_counted(models, tmp_path, capsys):
    """Default: the first row or response that cannot be scored stops `steer label`, naming file, line and
    field, and nothing is written. `--on-bad-row skip`: it is left out, counted on the console and in the
    report (with the reasons); the rest of the file is labelled."""
    from rm_jax.steer.label import label_samples
    from tests.helpers import bundled_tokenizer

    tok = bundled_tokenizer()
    ids = {y: tok(y + "\n", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for y in "ac"}
    samples, out = tmp_path / "s.jsonl", tmp_path / "g.jsonl"
    row = {"prompt": "ok", "attributes": "verbosity:1", "responses": ["a", "b", "c"]}
    rows = [
        {**row, "response_ids": [ids["a"], [5000], ids["c"]]},  # 5000: past the policy's 1000 tokens
        {**row, "prompt": "no", "response_ids": "oops"},
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["steer", "label", "--policy", models["policy"], "--rm", models["rm"], "--input", str(samples)]
    args += ["--output", str(out), "--sigma", SIGMA, "--no-progress"]
    assert main(args) == 1
    assert f"{samples}: line 2, field 'response_ids': expected one list" in capsys.readouterr().err
    samples.write_text(json.dumps(rows[0]) + "\n")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{samples}: line 1, field 'responses[1]': response_ids: token id 5000 is outside the vocabulary" in err
    assert "nothing written" in err and not out.exists()

    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(args + ["--on-bad-row", "skip"]) == 0
    got = capsys.readouterr()
    assert "skipped 1 rows that could not be read, 1 responses that could not be scored" in got.out
    assert f"first left out: {samples}: line 2, field 'response_ids'" in got.err
    groups = load_groups(str(out))
    assert [g.responses for g in groups] == [["a", "c"]] and groups[0].response_ids == [ids["a"], ids["c"]]
    rep = label_samples(str(samples), models["policy"], models["rm"], str(out), sigma=SIGMA, progress=False,
                        on_bad_row="skip")  # fmt: skip
    assert rep["skipped"] == {"bad_rows": 1, "bad_responses": 1} and rep["scored_on_ids"] == 2
    assert [b.split(", field ")[0] for b in rep["bad"]] == [f"{samples}: line 2", f"{samples}: line 1"]
