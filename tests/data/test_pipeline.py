"""Encoding with the over-length policy, nested subsets, deterministic and restorable loading."""

import json

import numpy as np
import pytest
from scipy import stats as sps

from rm_jax.cli import main
from rm_jax.data.conversation import encode, row_to_messages
from rm_jax.data.pipeline import Loader, encode_helpsteer, fit_length, resolve_source, subset_prompts
from rm_jax.data.sources import load_helpsteer, pair_ids
from tests.helpers import bundled_tokenizer

ATTRS = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


@pytest.fixture(scope="module")
def tok():
    return bundled_tokenizer()


@pytest.fixture(scope="module")
def rows():
    return load_helpsteer(resolve_source("bundled"), "train").rows


def test_fit_length_policy():
    ids = np.arange(1, 21, dtype=np.int32)  # prompt = first 12 tokens, response = last 8
    kept, trunc = fit_length(ids, 12, 30, "truncate", bos_id=None)
    assert not trunc and (kept == ids).all()
    kept, trunc = fit_length(ids, 12, 15, "truncate", bos_id=None)
    assert trunc and (kept == ids[-15:]).all()
    kept, trunc = fit_length(ids, 12, 15, "truncate", bos_id=1)  # BOS kept, prompt cut after it
    assert trunc and kept[0] == 1 and (kept[1:] == ids[-14:]).all() and len(kept) == 15
    assert fit_length(ids, 12, 8, "truncate", None) == (None, False)  # response alone fills the row
    assert fit_length(ids, 12, 15, "drop", None) == (None, False)


def test_encode_counts_truncation_and_keeps_the_response(tok, rows):
    enc = encode_helpsteer(rows[:400], tok, 48, overlength="truncate")
    full = encode(tok, [row_to_messages(r) for r in rows[:400]])
    assert enc.report.truncated == sum(48 < len(x) for x in full) - enc.report.dropped
    assert enc.report.truncated > 0 and all(len(x) <= 48 for x in enc.ids)
    kept_rows = enc.source_rows
    for x, r in zip(enc.ids, kept_rows):
        f = full[r]
        assert (x == f[len(f) - len(x) :]).all()  # a suffix: the response and the end of the prompt
    dropped = encode_helpsteer(rows[:400], tok, 48, overlength="drop")
    assert dropped.report.dropped == sum(48 < len(x) for x in full) and dropped.report.truncated == 0


def test_missing_labels_are_masked(tok, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(
        json.dumps(
            {
                "prompt": "a",
                "response": "b",
                "helpfulness": 3,
                "correctness": -100,
                "coherence": None,
                "complexity": 1,
                "verbosity": 2,
            }
        )
        + "\n"
    )
    enc = encode_helpsteer(load_helpsteer(str(p)).rows, tok, 64)
    assert enc.label_mask.tolist() == [[1, 0, 0, 1, 1]]
    assert enc.labels.tolist() == [[3, 0, 0, 1, 2]]


def test_subsets_are_nested_whole_prompts_and_reproducible(rows):
    groups = np.asarray(pair_ids(rows))
    subsets = {f: set(subset_prompts(rows, f, seed=5)) for f in (0.1, 0.25, 0.5, 1.0)}
    assert subsets[0.1] <= subsets[0.25] <= subsets[0.5] <= subsets[1.0] == set(range(len(rows)))
    for f, s in subsets.items():
        g = set(groups[list(s)])
        assert sum(groups[i] in g for i in range(len(rows))) == len(s)  # both responses of a prompt, or none
        assert len(g) == round(f * (groups.max() + 1))
    assert subsets[0.25] == set(subset_prompts(rows, 0.25, seed=5))
    assert subsets[0.25] != set(subset_prompts(rows, 0.25, seed=6))
    assert len(set(groups[subset_prompts(rows, max_prompts=37, seed=5)])) == 37


def _loader(enc, seed=0):
    return Loader(enc, seq_len=128, max_segments=8, rows_per_batch=4, pad_id=0, seed=seed)


def test_loader_is_deterministic_reshuffles_and_restores(tok, rows):
    enc = encode_helpsteer(rows[:300], tok, 128)
    a, b = _loader(enc), _loader(enc)
    n = a.steps_per_epoch()
    first = [next(a) for _ in range(n + 3)]
    second = [next(b) for _ in range(n + 3)]
    for x, y in zip(first, second):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # every example exactly once per epoch, and epoch 2 is ordered differently
    ep1 = np.concatenate([x["example_index"].ravel() for x in first[:n]])
    assert sorted(ep1[ep1 >= 0].tolist()) == list(range(len(enc.ids)))
    assert not np.array_equal(first[0]["example_index"], first[n]["example_index"])
    # a restored loader continues with exactly the next batch
    c = _loader(enc)
    c.set_state(json.loads(json.dumps(_state_after(enc, n + 1))))
    nxt = next(c)
    for k in nxt:
        np.testing.assert_array_equal(nxt[k], first[n + 1][k])
    assert _loader(enc, seed=1).__next__()["example_index"].tolist() != first[0]["example_index"].tolist()


def _state_after(enc, k):
    l = _loader(enc)
    for _ in range(k):
        next(l)
    return l.get_state()


def test_packing_fills_rows(tok, rows):
    enc = encode_helpsteer(rows, tok, 128)
    l = _loader(enc)
    batches = [next(l) for _ in range(l.steps_per_epoch())]
    fill = np.mean([(b["segment_ids"] > 0).mean() for b in batches[:-1]])
    assert fill > 0.95


def test_train_reports_bad_rows(tmp_path, capsys):
    good = load_helpsteer(resolve_source("bundled"), "validation").rows[:40]
    lines = [json.dumps({k: r[k] for k in ["prompt", "response", *ATTRS]}) for r in good]
    lines[5] = lines[5].replace('"helpfulness": ', '"helpfulness": 9, "x": ')
    lines[9] = "{not json"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    from tests.helpers import TINY as tiny

    args = [
        "train",
        tiny,
        f"run_dir={tmp_path / 'run'}",
        f"data.train={path}",
        "data.validation=null",
        "train.max_steps=2",
        "logging.progress=false",
        "mesh.num_devices=1",
        "mesh.data=1",
        "model.arch.hidden_size=32",
        "model.arch.intermediate_size=64",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "row 6" in err and "helpfulness" in err
    assert main(args + ["data.on_bad_row=skip"]) == 0
    rep = json.load(open(tmp_path / "run" / "data_report.json"))["train"]
    assert rep["rows_skipped"] == 2 and rep["rows_used"] == 38
    assert "skipped 2 bad rows" in capsys.readouterr().err


def test_data_stats_cli_matches_numpy_and_scipy(capsys, rows):
    assert main(["data", "stats", "bundled", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == len(rows) and out["prompts"] == len(set(r["prompt"] for r in rows))
    h = np.asarray([r["helpfulness"] for r in rows], float)
    cols = {a: np.asarray([r[a] for r in rows], float) for a in ATTRS}
    cols["turns"] = np.asarray([1 + 2 * r["prompt"].count("\n<extra_id_1>User\n") for r in rows], float)
    cols["prompt_chars"] = np.asarray([len(r["prompt"]) for r in rows], float)
    cols["response_chars"] = np.asarray([len(r["response"]) for r in rows], float)
    for name, x in cols.items():
        s = out["stats"][name]
        assert s["mean"] == pytest.approx(x.mean(), abs=1e-6)
        assert s["std"] == pytest.approx(x.std(ddof=1), abs=1e-6)
        if name != "helpfulness":
            assert s["pearson_helpfulness"] == pytest.approx(sps.pearsonr(x, h)[0], abs=1e-6)


def test_prompt_pair_units_order_by_helpfulness_and_leave_out_ties_and_missing():
    from rm_jax.data.pipeline import Encoded, Loader, prompt_pair_units

    group = np.asarray([0, 0, 1, 1, 2, 2, 2, 3, 4, 4])
    y = np.asarray([1, 3, 2, 2, 4, 0, 2, 3, 1, 0], np.float32)
    labels = np.stack([np.zeros(10), y], 1).astype(np.float32)  # column 1 orders the pairs
    mask = np.ones_like(labels)
    mask[9, 1] = 0  # prompt 4: one label missing, no pair
    ids = [np.full(3 + i % 4, i + 1, np.int32) for i in range(10)]
    enc = Encoded(ids, labels, mask, [(i,) for i in range(10)], np.arange(10), group, np.ones(10, np.float32))
    out = prompt_pair_units(enc, 1)
    assert out.units == [(0, 1), (2, 3), (4, 5, 6), (7,), (8, 9)]
    assert sorted(map(tuple, out.pairs.tolist())) == [(1, 0), (4, 5), (4, 6), (6, 5)]
    # Batches keep each prompt's responses together and point the pair slots at them.
    loader = Loader(out, 32, 6, 2, pad_id=0, seed=2)
    seen = []
    for _ in range(loader.steps_per_epoch()):
        b = next(loader)
        flat = b["example_index"].reshape(-1)
        for u in out.units:
            assert np.isin(u, flat).all() or not np.isin(u, flat).any()
        m = b["pair_mask"] > 0
        seen += list(zip(flat[b["pair_chosen"][m]].tolist(), flat[b["pair_rejected"][m]].tolist()))
    assert sorted(seen) == [(1, 0), (4, 5), (4, 6), (6, 5)]


# ---------------------------------------------------------------- shared prompts in training batches


def _pairs_from(rows):
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["prompt"], []).append(r)
    return [
        {"prompt": p, "chosen": g[0]["response"], "rejected": g[1]["response"]} for p, g in groups.items() if len(g) > 1
    ]


def _loss_and_grads(cfg, loss_cfg, params, batch, max_segments):
    import jax
    import jax.numpy as jnp

    from rm_jax.core.attributes import ATTRIBUTES, resolve_reward_weights
    from rm_jax.engine.train_step import _sums

    attr_w = jnp.asarray(loss_cfg.attribute_weights, jnp.float32)
    reward_w = jnp.asarray(resolve_reward_weights(loss_cfg.reward_weights, ATTRIBUTES), jnp.float32)
    mb = {k: jnp.asarray(v) for k, v in batch.items() if k != "example_index"}

    def f(p):
        s = _sums(cfg, loss_cfg, p, mb, max_segments, attr_w, reward_w)
        return s["num"] / s["den"]

    return jax.jit(jax.value_and_grad(f))(params)


@pytest.mark.parametrize(
    "task,run",
    [
        ("rm", {"lora_rank": 4}),  # LoRA under scan and remat: the steerlm2 case below
        ("pairs", {"shared_prompts": True}),
    ],
    ids=["rm-lora", "pairs-prompt-range"],
)
def test_shared_batches_give_the_unshared_loss_and_gradients(tok, rows, task, run):
    """The first step's batch laid out with shared prompts and the same examples laid out whole: loss and
    every gradient equal within 1e-5 relative; the shared batch holds fewer tokens and says how many."""
    import jax

    from rm_jax.core.config import LossConfig
    from rm_jax.data.pipeline import encode_pairs, make_batch
    from rm_jax.models.llama import DecoderConfig, RewardModel
    from tests.helpers import TINY_DECODER

    if task == "rm":
        enc = encode_helpsteer(rows[:48], tok, 192, attributes=ATTRS)
        loss_cfg = LossConfig()
    else:
        enc = encode_pairs(_pairs_from(rows[:80]), tok, 192)
        loss_cfg = LossConfig(type="bt")
    loader = Loader(enc, 192, 8, 2, pad_id=0, shuffle=False, share_prompts=True)
    shared = next(loader)
    bins = loader._epoch_plan(0)[0]
    width = max(sum(len(enc.ids[i]) for i in row) for row in bins)
    plain = make_batch(enc, bins, -(-width // 64) * 64, 8, 2, 0, unit_size=loader.unit_size)  # the same, whole
    np.testing.assert_array_equal(
        np.sort(shared["example_index"][shared["example_index"] >= 0]),
        np.sort(plain["example_index"][plain["example_index"] >= 0]),
    )
    assert shared["tokens_unshared"].sum() == (plain["segment_ids"] != 0).sum()
    assert (shared["segment_ids"] != 0).sum() < shared["tokens_unshared"].sum()

    cfg = DecoderConfig(
        **dict(TINY_DECODER, vocab_size=len(tok)), attention="xla", attention_block=0, initializer_range=0.3, **run
    )
    params = RewardModel(cfg).init(jax.random.key(0), *([np.ones((1, 8), np.int32)] * 3), 1)["params"]
    loss_s, g_s = _loss_and_grads(cfg, loss_cfg, params, shared, 8)
    loss_p, g_p = _loss_and_grads(cfg, loss_cfg, params, plain, 8)
    assert abs(float(loss_s) - float(loss_p)) <= 1e-5 * abs(float(loss_p)), (loss_s, loss_p)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_s), jax.tree.leaves(g_p)):
        b = np.asarray(b)
        assert np.abs(b).max() > 0 or "lora_a" in str(path), path  # LoRA's A: zero gradient while B is zero
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-5 * np.abs(b).max(), err_msg=str(path))


def _step_examples(batch) -> list[int]:
    idx = batch["example_index"]
    return sorted(int(i) for i in idx[idx >= 0])


def test_shared_steps_same_hold_the_unshared_examples_in_fewer_rows(tok, rows):
    """``shared_steps: same``: every micro-batch of an epoch holds exactly the unshared run's examples (so a
    run's loss curve is the unshared one), in at most the unshared rows, and fewer where the step allows;
    regression samples a prompt's responses together in both layouts."""
    enc = encode_helpsteer(rows[:120], tok, 256, attributes=ATTRS)
    plain = Loader(enc, 256, 8, 6, pad_id=0, seed=3, sample_by_prompt=True)
    shared = Loader(enc, 256, 8, 6, pad_id=0, seed=3, sample_by_prompt=True, share_prompts=True)
    assert plain.unit_size > 1 and plain.steps_per_epoch() == shared.steps_per_epoch()
    rows_shared = shared.fix_shared_rows(2 * plain.steps_per_epoch())
    assert rows_shared < 6  # the step's examples fit fewer rows when each prompt is laid out once
    saved = 0
    for _ in range(2 * plain.steps_per_epoch()):  # two epochs: the second reshuffles
        a, b = next(plain), next(shared)
        assert _step_examples(a) == _step_examples(b)
        assert b["input_ids"].shape == (rows_shared, 256) and a["input_ids"].shape == (6, 256)
        assert b["tokens_unshared"].sum() == (a["segment_ids"] != 0).sum()
        saved += b["tokens_unshared"].sum() - (b["segment_ids"] != 0).sum()
    assert saved > 0
    summary = shared.share_summary()
    assert summary["rows_per_batch"]["unshared"] == 6 and summary["rows_per_batch"]["shared"] <= rows_shared
    assert summary["prompt_tokens_saved"] > 0 and summary["tokens"] < summary["tokens_unshared"]


def test_fix_shared_rows_rounds_to_the_data_parallel_size_and_falls_back_past_the_horizon(tok, rows):
    enc = encode_helpsteer(rows[:120], tok, 256, attributes=ATTRS)
    loader = Loader(enc, 256, 8, 8, pad_id=0, sample_by_prompt=True, share_prompts=True)
    assert next(loader)["input_ids"].shape[0] == 8  # never fixed (a batch spec, the memory plan): the upper bound
    loader.epoch, loader.index = 0, 0
    one = loader.fix_shared_rows(loader.steps_per_epoch())
    assert loader.fix_shared_rows(loader.steps_per_epoch(), multiple=4) == -(-one // 4) * 4
    loader._shared_rows = 1  # a step needing more rows than fixed: the unshared count, never a dropped example
    b = next(loader)
    assert b["input_ids"].shape[0] == 8
    assert _step_examples(b) == sorted(i for row in loader._epoch_plan(0)[0] for i in row)


def test_shared_and_unshared_first_steps_give_one_loss(tok, rows):
    """The acceptance of docs/sharing.md: the first training step of ``share_prompts`` true and false (the
    loaders a run builds, attribute regression) has one loss within 1e-5 relative, and fewer tokens shared."""
    import jax

    from rm_jax.core.config import LossConfig
    from rm_jax.models.llama import DecoderConfig, RewardModel
    from tests.helpers import TINY_DECODER

    enc = encode_helpsteer(rows[:60], tok, 192, attributes=ATTRS)
    first = {s: next(Loader(enc, 192, 8, 4, pad_id=0, sample_by_prompt=True, share_prompts=s)) for s in (False, True)}
    assert (first[True]["segment_ids"] != 0).sum() < (first[False]["segment_ids"] != 0).sum()
    cfg = DecoderConfig(**dict(TINY_DECODER, vocab_size=len(tok)), attention="xla", initializer_range=0.3)
    params = RewardModel(cfg).init(jax.random.key(0), *([np.ones((1, 8), np.int32)] * 3), 1)["params"]
    loss = {s: float(_loss_and_grads(cfg, LossConfig(), params, b, 8)[0]) for s, b in first.items()}
    assert abs(loss[True] - loss[False]) <= 1e-5 * abs(loss[False]), loss


def _steer_groups(rows, n_groups):
    """SteerLM 2.0 groups of 2-3 responses (a prompt's own two and another prompt's), log-probabilities drawn
    so that neither w nor b is uniform."""
    from rm_jax.data.conversation import split_prompt
    from rm_jax.data.steer_groups import SteerGroup

    by: dict = {}
    for r in rows:
        by.setdefault(r["prompt"], []).append(r["response"])
    prompts = [p for p, ys in by.items() if len(ys) > 1][:n_groups]
    rng = np.random.default_rng(0)
    out = []
    for k, p in enumerate(prompts):
        ys = by[p][:2] + ([by[prompts[k - 1]][0]] if k % 2 else [])
        logs = [rng.normal(-5.0, 2.0, len(ys)) for _ in range(3)]
        out.append(SteerGroup("", split_prompt(p), "helpfulness:4,verbosity:1", ys, *logs, row=k))
    return out


@pytest.mark.parametrize("run", [{"scan_layers": True, "remat": "full", "lora_rank": 4}], ids=["lora"])
def test_shared_steerlm2_batches_give_the_unshared_loss_and_gradients(tok, rows, run):
    """SteerLM 2.0 groups (log Q_theta of each response, summed over its tokens) laid out with each group's prompt
    once and the same groups laid out whole: the first step's loss and every gradient equal within 1e-5
    relative, the slots' response-token counts equal, and the shared batch holds fewer tokens."""
    import jax

    from rm_jax.core.config import LossConfig
    from rm_jax.data.pipeline import make_batch, shared_unit_length
    from rm_jax.data.steer_groups import encode_groups
    from rm_jax.models.llama import CausalLM, DecoderConfig
    from tests.helpers import TINY_DECODER

    enc = encode_groups(_steer_groups(rows[:40], 6), tok, 1024)
    bins = [[e for u in enc.units[k : k + 3] for e in u] for k in (0, 3)]  # three groups a row
    width = -(-max(sum(len(enc.ids[i]) for i in row) for row in bins) // 64) * 64
    shared = make_batch(enc, bins, width, 9, 2, 0, unit_size=3, share=True)
    plain = make_batch(enc, bins, width, 9, 2, 0, unit_size=3)
    for k in ("example_index", "w", "logq_prime", "steer_group"):
        np.testing.assert_array_equal(shared[k], plain[k], err_msg=k)
    assert shared["tokens_unshared"].sum() == (plain["segment_ids"] != 0).sum()
    laid_out = sum(shared_unit_length(enc, u) for u in enc.units)  # what a loader plans with
    assert (shared["segment_ids"] != 0).sum() == laid_out < shared["tokens_unshared"].sum()
    assert shared["loss_mask"].sum() == plain["loss_mask"].sum()

    cfg = DecoderConfig(
        **dict(TINY_DECODER, vocab_size=len(tok)),
        head="lm",
        attention="xla",
        attention_block=0,
        initializer_range=0.3,
        **run,
    )
    params = CausalLM(cfg).init(jax.random.key(0), *([np.ones((1, 8), np.int32)] * 3))["params"]
    if run:  # LoRA's B starts at zero (A's gradient too): give it weights so the adapters take part
        params = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.05 if "lora_b" in str(p) else x, params)
    loss_s, g_s = _loss_and_grads(cfg, LossConfig(), params, shared, 9)
    loss_p, g_p = _loss_and_grads(cfg, LossConfig(), params, plain, 9)
    assert abs(float(loss_s) - float(loss_p)) <= 1e-5 * abs(float(loss_p)), (loss_s, loss_p)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_s), jax.tree.leaves(g_p)):
        b = np.asarray(b)
        assert np.abs(b).max() > 0, path
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-5 * np.abs(b).max(), err_msg=str(path))
