"""The yardsticks HelpSteer's authors report now, scored by a reward model: RM-Bench, JudgeBench and
HelpSteer3-Preference validation accuracy (``rm-jax eval --rm-bench / --judgebench / --helpsteer3``).

Each flattens its rows into ``{"prompt", "response"}`` conversations, predicts every distinct one once
through :func:`rm_jax.evaluation.evaluate.predict_conversations` (the path of ``rm-jax score``, so
identical texts get bit-identical rewards and exact-tie rules see them tie), turns attributes into the
``weights`` reward and every preset, and scores with the benchmark's own rules
(:mod:`.rm_bench`, :mod:`.judgebench`, :mod:`.helpsteer3`). A response that alone does not fit is cut
from the left, as RewardBench's pairs are, and counted; no row is dropped.

``weights`` may name a prompt gate (``weights fit --gate``): each response's reward is then its attributes .
the gate's weights for its prompt (the gate is the ``*`` weighting, labelled by its folder, every preset
beside it) and each score-file record carries those ``weights``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import WeightSpec, applicable_presets
from rm_jax.core.config import SharePrompts
from rm_jax.core.errors import InputError
from rm_jax.data import judgebench_pairs, rm_bench_rows
from rm_jax.data.judgebench_pairs import JudgeBenchPair
from rm_jax.data.rm_bench_rows import STYLES, RMBenchRow
from rm_jax.evaluation.evaluate import GATE_ROW_WEIGHTS, _limit, predict_conversations
from rm_jax.evaluation.gate import is_gate, open_gate, row_weights
from rm_jax.evaluation.helpsteer3 import score_helpsteer3
from rm_jax.evaluation.judgebench import score_judgebench
from rm_jax.evaluation.rm_bench import score_rm_bench
from rm_jax.evaluation.weights import check_weights, default_weights, weight_sets

HEADLINE = {"rm_bench": "overall", "judgebench": "overall", "helpsteer3": "accuracy"}


def _predict(model: Any, convs: list[dict], seq_len: Optional[int], desc: str, **opts: Any) -> tuple[np.ndarray, dict]:
    return predict_conversations(model, convs, _limit(model, seq_len), True, desc=desc, **opts)


def _with_presets(
    score: Callable[[np.ndarray], dict],
    pred: np.ndarray,
    attributes: Sequence[str],
    weights: WeightSpec,
    gate_w: Optional[np.ndarray] = None,
) -> dict:
    """``score(reward)`` for the ``weights`` reward, and every preset's headline under ``presets``. With a
    prompt gate, ``gate_w`` [responses, A] are each response's weights: the reward is ``sum(pred * gate_w)``
    and the gate's headline sits beside the presets', under its folder's name."""
    if gate_w is None:
        result = score(pred @ check_weights(weights, attributes))
        sets = weight_sets(weights, attributes)
    else:
        result = score((np.asarray(pred, np.float64) * gate_w).sum(axis=1))
        sets = applicable_presets(attributes)
    headline = next(k for k in ("overall", "accuracy") if k in result)
    result["presets"] = {name: score(pred @ w)[headline] for name, w in sets.items()}
    if gate_w is not None:
        result["presets"][open_gate(weights).label] = result[headline]
        result[GATE_ROW_WEIGHTS] = gate_w  # for the score records; evaluate_yardstick pops it
    return result


def _weights(model: Any, weights: Optional[WeightSpec]) -> tuple[list[str], WeightSpec]:
    attributes = list(model.attributes)
    weights = default_weights(attributes) if weights is None else weights
    if is_gate(weights):
        open_gate(weights, attributes)
    else:
        check_weights(weights, attributes)
    return attributes, weights


def _gate_weights(model: Any, weights: WeightSpec, convs: list[dict], limit: int, opts: dict) -> Optional[np.ndarray]:
    """Each response's weights [responses, A] when ``weights`` names a prompt gate (the gate on the prompt
    of its own conversation), else None."""
    if not is_gate(weights):
        return None
    o = {k: opts[k] for k in ("batch_rows", "max_segments", "progress") if k in opts}
    return row_weights(open_gate(weights, model.attributes), model, convs, limit, **o)


RM_BENCH_MAX_LENGTH = 2048  # RM-Bench scripts/run_rm.py --max_length default


def predict_rm_bench_policy(
    model: Any,
    convs: list[dict],
    seq_len: Optional[int],
    batch_rows: int = 16,
    max_segments: int = 16,
    progress: bool = True,
    share_prompts: SharePrompts = "auto",
) -> tuple[np.ndarray, dict]:
    """Predictions as RM-Bench's runner tokenises (``scripts/run_rm.py``: ``tokenizer.truncation_side =
    "left"`` (L176), a text-classification pipeline with ``truncation=True, max_length=2048`` (L183-190), the
    text the chat template renders for ``[user: prompt, assistant: response]``): the whole templated text cut
    from the left, special tokens as the tokenizer adds them."""
    from rm_jax.data.conversation import resolve_template, row_to_messages
    from rm_jax.evaluation.evaluate import _predict_distinct

    tok = model.tokenizer
    limit = RM_BENCH_MAX_LENGTH if seq_len is None else seq_len
    tmpl = resolve_template(tok, model.template)
    texts = [tok.apply_chat_template(row_to_messages(c), tokenize=False, chat_template=tmpl) for c in convs]
    side = tok.truncation_side
    try:
        tok.truncation_side = "left"
        ids = tok(texts, truncation=True, max_length=limit)["input_ids"]
    finally:
        tok.truncation_side = side
    cut = sum(len(x) > limit for x in tok(texts, truncation=False)["input_ids"])
    # A row's six responses share its prompt text; their common token prefix is laid out once
    # (a text cut from the left may share less, or nothing: rm_jax.data.prefix_sharing computes it).
    prompts = [str(c["prompt"]) for c in convs]
    sharing: dict = {}
    pred, distinct = _predict_distinct(
        model,
        [np.asarray(x, np.int32) for x in ids],
        limit,
        batch_rows,
        max_segments,
        progress,
        "rm-bench",
        prompts,
        share_prompts,
        sharing,
    )
    counts = {"rows": len(convs), "distinct_conversations": distinct, "length_policy": "rm_bench", "cut": cut}
    return pred, {**counts, "seq_len": limit, "truncation_side": "left", **({"sharing": sharing} if sharing else {})}


def evaluate_rm_bench(
    model: Any,
    rows: Sequence[RMBenchRow],
    weights: Optional[WeightSpec] = None,
    *,
    seq_len: Optional[int] = None,
    length_policy: str = "prompt-left",
    **opts: Any,
) -> tuple[dict, np.ndarray]:
    """RM-Bench scores and the attribute predictions [rows * 6, A] (per row: 3 chosen, then 3 rejected).
    ``length_policy="rm_bench"``: RM-Bench's own tokenisation (:func:`predict_rm_bench_policy`)."""
    attributes, weights = _weights(model, weights)
    convs = rm_bench_rows.flatten(rows)
    if length_policy == "rm_bench":
        pred, counts = predict_rm_bench_policy(model, convs, seq_len, **opts)
    else:
        pred, counts = _predict(model, convs, seq_len, "rm-bench", **opts)
    n = len(STYLES)
    gate_w = _gate_weights(model, weights, convs, int(counts.get("seq_len") or _limit(model, seq_len)), opts)

    def score(reward: np.ndarray) -> dict:
        r = reward.reshape(len(rows), 2 * n)
        return score_rm_bench(rows, r[:, :n], r[:, n:])

    report = _with_presets(score, pred, attributes, weights, gate_w)
    report["counts"] = counts
    return report, pred


def evaluate_judgebench(
    model: Any,
    pairs: Sequence[JudgeBenchPair],
    weights: Optional[WeightSpec] = None,
    *,
    seq_len: Optional[int] = None,
    **opts: Any,
) -> tuple[dict, np.ndarray]:
    """JudgeBench single-game accuracy and the attribute predictions [pairs * 2, A] (A then B)."""
    attributes, weights = _weights(model, weights)
    convs = judgebench_pairs.flatten(pairs)
    pred, counts = _predict(model, convs, seq_len, "judgebench", **opts)
    gate_w = _gate_weights(model, weights, convs, _limit(model, seq_len), opts)

    def score(reward: np.ndarray) -> dict:
        r = reward.reshape(len(pairs), 2)
        return score_judgebench(pairs, r[:, 0], r[:, 1])

    report = _with_presets(score, pred, attributes, weights, gate_w)
    report["counts"] = counts
    return report, pred


def evaluate_helpsteer3(
    model: Any,
    rows: Sequence[dict],
    weights: Optional[WeightSpec] = None,
    *,
    ties_left_out: int = 0,
    seq_len: Optional[int] = None,
    **opts: Any,
) -> tuple[dict, np.ndarray]:
    """HelpSteer3 pairwise accuracy of pairs from :func:`rm_jax.data.helpsteer3_pairs.load_helpsteer3` and the
    attribute predictions [pairs * 2, A] (chosen then rejected)."""
    attributes, weights = _weights(model, weights)
    convs = [{"prompt": r["prompt"], "response": t} for r in rows for t in (r["chosen"], r["rejected"])]
    pred, counts = _predict(model, convs, seq_len, "helpsteer3", **opts)
    gate_w = _gate_weights(model, weights, convs, _limit(model, seq_len), opts)

    def score(reward: np.ndarray) -> dict:
        r = reward.reshape(len(rows), 2)
        return score_helpsteer3(rows, r[:, 0], r[:, 1], ties_left_out)

    report = _with_presets(score, pred, attributes, weights, gate_w)
    report["counts"] = counts
    return report, pred


# ----------------------------------------------------------------------------- per-response score files


def _record(pred_row: np.ndarray, attributes: Sequence[str], w: np.ndarray, gate: bool, **key: Any) -> dict:
    p = np.asarray(pred_row, np.float64)
    rec = {**key, "reward": float(p @ w), "attributes": {a: float(x) for a, x in zip(attributes, p)}}
    if gate:  # the response's own weights (a prompt gate's, for its prompt)
        rec["weights"] = {a: float(x) for a, x in zip(attributes, w)}
    return rec


def _response_weights(
    weights: WeightSpec, attributes: Sequence[str], n: int, gate_w: Optional[np.ndarray]
) -> np.ndarray:
    """[n, A]: ``gate_w`` (each response's gate weights) or the constant ``weights`` on every row."""
    if gate_w is not None:
        if len(gate_w) != n:
            raise ValueError(f"{len(gate_w)} rows of gate weights for {n} responses")
        return np.asarray(gate_w, np.float64)
    return np.broadcast_to(check_weights(weights, attributes), (n, len(attributes)))


def _scored_records(
    keys: Sequence[dict], pred: np.ndarray, attributes: Sequence[str], weights: WeightSpec, gate_w: Optional[np.ndarray]
) -> list[dict]:
    """One record per response: its identifying ``keys``, reward, attributes (and a gate's weights)."""
    w = _response_weights(weights, attributes, len(pred), gate_w)
    if len(keys) != len(pred):
        raise ValueError(f"{len(keys)} responses but {len(pred)} predictions")
    return [_record(pred[j], attributes, w[j], gate_w is not None, **k) for j, k in enumerate(keys)]


def rm_bench_records(
    rows: Sequence[RMBenchRow],
    pred: np.ndarray,
    attributes: Sequence[str],
    weights: WeightSpec,
    gate_w: Optional[np.ndarray] = None,
) -> list[dict]:
    sides = [("chosen", s) for s in STYLES] + [("rejected", s) for s in STYLES]
    keys = [dict(id=r.id, domain=r.domain, side=side, style=style) for r in rows for side, style in sides]
    return _scored_records(keys, pred, attributes, weights, gate_w)


def judgebench_records(
    pairs: Sequence[JudgeBenchPair],
    pred: np.ndarray,
    attributes: Sequence[str],
    weights: WeightSpec,
    gate_w: Optional[np.ndarray] = None,
) -> list[dict]:
    keys = [dict(pair_id=p.pair_id, source=p.source, response=ab, label=p.label) for p in pairs for ab in "AB"]
    return _scored_records(keys, pred, attributes, weights, gate_w)


def helpsteer3_records(
    rows: Sequence[dict],
    pred: np.ndarray,
    attributes: Sequence[str],
    weights: WeightSpec,
    gate_w: Optional[np.ndarray] = None,
) -> list[dict]:
    keys = [
        dict(
            row=r["_row"],
            context_id=r["context_id"],
            domain=r["domain"],
            language=r["language"],
            side=side,
            strength=r["strength"],
        )
        for r in rows
        for side in ("chosen", "rejected")
    ]
    return _scored_records(keys, pred, attributes, weights, gate_w)


# ----------------------------------------------------------------------------- one entry point per name

YARDSTICKS = ("rm_bench", "judgebench", "helpsteer3")
TITLES = {"rm_bench": "RM-Bench", "judgebench": "JudgeBench", "helpsteer3": "HelpSteer3-Preference"}
DEFAULT_SPLITS = {"rm_bench": None, "judgebench": "gpt", "helpsteer3": "validation"}


def load_yardstick(name: str, source: str, split: Optional[str] = None) -> Any:
    """The rows of yardstick ``name`` (one of :data:`YARDSTICKS`) from ``source``, validated (a bad row is a
    :class:`rm_jax.core.errors.DataError` naming file, row and field)."""
    split = split or DEFAULT_SPLITS[name]
    if name == "rm_bench":
        return rm_bench_rows.load_rm_bench(source, split)
    if name == "judgebench":
        return judgebench_pairs.load_judgebench(source, split)
    if name == "helpsteer3":
        from rm_jax.data.helpsteer3_pairs import load_helpsteer3

        return load_helpsteer3(source, split)
    raise ValueError(f"unknown yardstick {name!r}: one of {', '.join(YARDSTICKS)}")


def evaluate_yardstick(
    model: Any,
    name: str,
    data: Any,
    weights: Optional[WeightSpec] = None,
    length_policy: str = "prompt-left",
    share_prompts: SharePrompts = "auto",
    **opts: Any,
) -> tuple[dict, list[dict]]:
    """Score ``data`` (from :func:`load_yardstick`) as yardstick ``name`` with ``model``: the report
    (``counts`` included) and the per-response score records. ``length_policy``: ``prompt-left`` (rm_jax's:
    the prompt cut from the left, a response alone too long cut from the left) or, for RM-Bench, ``rm_bench``.
    With a prompt gate as ``weights`` each record carries the response's ``weights``. ``share_prompts``
    (``auto`` / True / False): a row's responses (a pair's two, RM-Bench's six) share their prompt's tokens
    (rm_jax.data.prefix_sharing); what that saved is in ``counts["sharing"]``."""
    attributes = list(model.attributes)
    opts["share_prompts"] = share_prompts
    w = default_weights(attributes) if weights is None else weights
    if length_policy not in ("prompt-left", "rm_bench") or (length_policy == "rm_bench" and name != "rm_bench"):
        raise InputError(f"length policy {length_policy!r} does not apply to {TITLES[name]}")
    if name == "rm_bench":
        report, pred = evaluate_rm_bench(model, data, w, length_policy=length_policy, **opts)
        records = rm_bench_records(data, pred, attributes, w, report.pop(GATE_ROW_WEIGHTS, None))
    elif name == "judgebench":
        report, pred = evaluate_judgebench(model, data, w, **opts)
        records = judgebench_records(data, pred, attributes, w, report.pop(GATE_ROW_WEIGHTS, None))
    else:
        report, pred = evaluate_helpsteer3(model, data.rows, w, ties_left_out=data.ties_left_out, **opts)
        records = helpsteer3_records(data.rows, pred, attributes, w, report.pop(GATE_ROW_WEIGHTS, None))
    counts = report["counts"]
    report["counts"] = {"responses": counts.pop("rows"), **counts}
    return report, records


# ----------------------------------------------------------------------------- back from the score files

# Sweep columns: the headline and its parts, per yardstick (prefix, report key of the headline, part keys).
COLUMNS = {
    "rm_bench": ("rmb", "overall", ("hard", "normal", "easy"), "domains"),
    "judgebench": ("jb", "overall", (), "categories"),
    "helpsteer3": ("hs3", "accuracy", (), "domains"),
}


def load_yardstick_scores(name: str, path: str) -> tuple[Any, np.ndarray, list[str]]:
    """(data for :func:`yardstick_metrics`, attribute predictions [responses, A], attribute names) from a
    per-response score file written by ``rm-jax eval`` or a run's ``predictions/<name>.jsonl``: any
    reward weighting is scored again without the model. Texts are not stored: rows hold placeholders."""
    from rm_jax.core.errors import InputError
    from rm_jax.core.files import iter_jsonl

    recs = [rec for _, rec in iter_jsonl(path)]
    if not recs:
        raise InputError(f"{path}: no scored responses")
    try:
        attributes = list(recs[0]["attributes"])
        pred = np.asarray([[float(r["attributes"][a]) for a in attributes] for r in recs], np.float64)
        if name == "rm_bench":
            n = 2 * len(STYLES)
            data = [
                RMBenchRow(str(recs[i]["id"]), recs[i]["domain"], "", ("",) * 3, ("",) * 3)
                for i in range(0, len(recs), n)
            ]
        elif name == "judgebench":
            data = [JudgeBenchPair(str(r["pair_id"]), r["source"], "", "", "", r["label"]) for r in recs[::2]]
        elif name == "helpsteer3":
            data = [{"domain": r["domain"], "language": r["language"]} for r in recs[::2]]
        else:
            raise ValueError(f"unknown yardstick {name!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: not a {TITLES.get(name, name)} score file ({e!r})") from None
    return data, pred, attributes


def yardstick_metrics(name: str, data: Any, pred: np.ndarray, attributes: Sequence[str], weights: WeightSpec) -> dict:
    """The yardstick's scores for the ``weights`` reward of saved attribute predictions."""
    reward = np.asarray(pred, np.float64) @ check_weights(weights, attributes)
    if name == "rm_bench":
        r = reward.reshape(len(data), 2 * len(STYLES))
        return score_rm_bench(data, r[:, : len(STYLES)], r[:, len(STYLES) :])
    r = reward.reshape(len(data), 2)
    if name == "judgebench":
        return score_judgebench(data, r[:, 0], r[:, 1])
    return score_helpsteer3(data, r[:, 0], r[:, 1])


def yardstick_columns(name: str, report: dict) -> dict[str, Optional[float]]:
    """Sweep columns of one report: ``rmb_overall``, ``rmb_hard`` ..., ``rmb_<domain>``; ``jb_overall``,
    ``jb_<category>``; ``hs3_accuracy``, ``hs3_<domain>``."""
    prefix, head, parts, groups = COLUMNS[name]
    out = {f"{prefix}_{head}": report[head], **{f"{prefix}_{k}": report[k] for k in parts}}
    out.update({f"{prefix}_{k}": v for k, v in report[groups].items()})
    return out
