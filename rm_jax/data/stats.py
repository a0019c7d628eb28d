"""Descriptive statistics of HelpSteer2-format data: the paper's Table 2 for any rows.

``helpsteer_stats`` is what ``rm-jax data stats FILE --json`` prints, so its dict shape is a
contract: ``{"rows", "prompts", "stats": {name: {"mean", "std", "pearson_helpfulness"}}}``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import DataError
from rm_jax.data.conversation import count_turns, encode, row_to_messages

STAT_NAMES: tuple[str, ...] = ATTRIBUTES + ("turns", "prompt_chars", "response_chars")
_TABLE_LABELS = {"turns": "turns in prompt", "prompt_chars": "prompt chars", "response_chars": "response chars"}
_MISSING = -100


def helpsteer_stats(rows: Sequence[Mapping[str, Any]]) -> dict:
    """Row count, unique prompts, and per quantity mean, std and Pearson r with helpfulness.

    Quantities: the five attributes, ``turns`` (``count_turns`` of the prompt: messages
    before the response), ``prompt_chars`` and ``response_chars``. Missing labels (None,
    -100, NaN) are left out: means and stds over the present values, Pearson over rows where
    both values are present. ``std`` is the sample standard deviation (ddof=1). A value that
    is undefined (fewer than 2 values, or a constant column for Pearson) is None, so the dict
    stays valid JSON.
    """
    columns = {name: _column(rows, name) for name in STAT_NAMES}
    helpfulness = columns["helpfulness"]
    out: dict[str, dict[str, float | None]] = {}
    for name, col in columns.items():
        present = col[~np.isnan(col)]
        both = ~np.isnan(col) & ~np.isnan(helpfulness)
        out[name] = {
            "mean": float(present.mean()) if present.size else None,
            "std": float(present.std(ddof=1)) if present.size >= 2 else None,
            "pearson_helpfulness": _pearson(col[both], helpfulness[both]),
        }
    return {"rows": len(rows), "prompts": len({r["prompt"] for r in rows}), "stats": out}


def token_length_stats(lengths: Iterable[int]) -> dict:
    """Summary of token counts per conversation: mean, std (sample, ddof=1), min, p50, p90, p99, max.

    Percentiles use numpy's default linear interpolation. Raises ValueError on no lengths.
    """
    x = np.asarray(list(lengths), dtype=np.float64)
    if x.size == 0:
        raise ValueError("token_length_stats: no lengths given")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size >= 2 else None,
        "min": int(x.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": int(x.max()),
    }


def format_stats_table(stats: Mapping[str, Any]) -> str:
    """``helpsteer_stats`` output (or just its ``"stats"`` part) as a Markdown table like Table 2."""
    per_name = stats.get("stats", stats)
    lines = []
    if "rows" in stats:
        lines += [f"rows: {stats['rows']}, unique prompts: {stats['prompts']}", ""]
    lines += ["| quantity | mean | std | Pearson r with helpfulness |", "|---|---|---|---|"]
    for name in STAT_NAMES:
        if name not in per_name:
            continue
        s = per_name[name]
        digits = 1 if name.endswith("_chars") else 4  # the paper's precision
        lines.append(
            f"| {_TABLE_LABELS.get(name, name)} | {_num(s['mean'], digits)} | "
            f"{_num(s['std'], digits)} | {_num(s['pearson_helpfulness'], 4)} |"
        )
    return "\n".join(lines)


def dataset_stats(
    source: str,
    split: str = "train",
    on_bad_row: str = "error",
    tokenizer: Any = None,
    template: str | None = None,
    kind: str = "helpsteer",
) -> dict:
    """``rm-jax data stats``: :func:`helpsteer_stats` (``kind`` helpsteer) or :func:`helpsteer3_stats`
    (``kind`` helpsteer3) of a source (file, folder, hub id, ``bundled``), plus token lengths under
    ``tokenizer`` when one is given and the count of skipped bad rows."""
    from rm_jax.data.pipeline import resolve_source
    from rm_jax.data.sources import load_helpsteer

    if kind == "helpsteer3":
        from rm_jax.data.helpsteer3_pairs import iter_helpsteer3

        skipped: list = []
        rows = list(iter_helpsteer3(source, split, skipped if on_bad_row == "skip" else None))
        if not rows:
            raise DataError(source, None, None, "no HelpSteer3 rows")
        stats = helpsteer3_stats(rows)
        if tokenizer is not None:
            convs = [
                [*r["prompt"], {"role": "assistant", "content": r[k]}] for r in rows for k in ("chosen", "rejected")
            ]
            stats["tokens"] = token_length_stats(len(x) for x in encode(tokenizer, convs, template))
        if skipped:
            stats["skipped_rows"] = len(skipped)
        return stats
    res = load_helpsteer(resolve_source(source), split, on_bad_row=on_bad_row)
    stats = helpsteer_stats(res.rows)
    if tokenizer is not None:
        lengths = [len(x) for x in encode(tokenizer, [row_to_messages(r) for r in res.rows], template)]
        stats["tokens"] = token_length_stats(lengths)
    if res.skipped:
        stats["skipped_rows"] = len(res.skipped)
    return stats


def format_stats_report(stats: Mapping[str, Any]) -> str:
    """The table plus token lengths and skipped rows, as ``rm-jax data stats`` prints them."""
    lines = [format_helpsteer3_stats(stats) if "preference_histogram" in stats else format_stats_table(stats)]
    if "tokens" in stats:
        lines.append("tokens per conversation: " + ", ".join(f"{k} {v:.1f}" for k, v in stats["tokens"].items()))
    if stats.get("skipped_rows"):
        lines.append(f"skipped {stats['skipped_rows']} bad rows")
    return "\n".join(lines)


def _column(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    if name == "turns":
        return np.asarray([count_turns(r["prompt"]) for r in rows], dtype=np.float64)
    if name == "prompt_chars":
        return np.asarray([len(r["prompt"]) for r in rows], dtype=np.float64)
    if name == "response_chars":
        return np.asarray([len(r["response"]) for r in rows], dtype=np.float64)
    values = [r.get(name) for r in rows]
    return np.asarray([np.nan if v is None or v == _MISSING else float(v) for v in values], dtype=np.float64)


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    r = float(sps.pearsonr(x, y).statistic)
    return r if math.isfinite(r) else None


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- HelpSteer3-Preference

PREFERENCES = tuple(range(-3, 4))


def helpsteer3_stats(rows: Sequence[Mapping[str, Any]]) -> dict:
    """Validated HelpSteer3 rows (ties included, :func:`rm_jax.data.helpsteer3_pairs.iter_helpsteer3`): overall and
    per domain and per language, the row count, mean turns in the context, mean characters of context and
    responses, and the histogram of ``overall_preference`` (-3..3; 0 = tie, left out of training)."""

    def part(sel: Sequence[Mapping[str, Any]]) -> dict:
        prefs = [r["preference"] for r in sel]
        return {
            "rows": len(sel),
            "ties": prefs.count(0),
            "turns_mean": float(np.mean([len(r["prompt"]) for r in sel])),
            "context_chars_mean": float(np.mean([sum(len(m["content"]) for m in r["prompt"]) for r in sel])),
            "response_chars_mean": float(np.mean([len(r[k]) for r in sel for k in ("chosen", "rejected")])),
            "preference_histogram": {str(p): prefs.count(p) for p in PREFERENCES},
        }

    out = {**part(rows), "contexts": len({repr(r["prompt"]) for r in rows})}
    for key, name in (("domain", "domains"), ("language", "languages")):
        out[name] = {v: part([r for r in rows if r[key] == v]) for v in sorted({r[key] for r in rows})}
    return out


def format_helpsteer3_stats(stats: Mapping[str, Any]) -> str:
    """:func:`helpsteer3_stats` as Markdown tables (per domain, then per language)."""
    head = "| {} | rows | ties | turns | context chars | response chars | " + " | ".join(map(str, PREFERENCES)) + " |"
    lines = [f"rows: {stats['rows']}, contexts: {stats['contexts']}, ties (preference 0): {stats['ties']}"]
    for name, label in (("domains", "domain"), ("languages", "language")):
        lines += ["", head.format(label), "|---" * (6 + len(PREFERENCES)) + "|"]
        for key, s in [*stats[name].items(), ("all", stats)]:
            hist = " | ".join(str(s["preference_histogram"][str(p)]) for p in PREFERENCES)
            lines.append(
                f"| {key} | {s['rows']} | {s['ties']} | {s['turns_mean']:.2f} | {s['context_chars_mean']:.1f} | "
                f"{s['response_chars_mean']:.1f} | {hist} |"
            )
    return "\n".join(lines)
