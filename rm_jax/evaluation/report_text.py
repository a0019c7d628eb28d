"""Evaluation results as readable text: attribute tables, pairwise accuracy, RewardBench sections.

Pure formatting of the dicts :mod:`rm_jax.evaluation.metrics` and :mod:`rm_jax.evaluation.rewardbench`
return; nothing here computes a metric.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from rm_jax.evaluation.metrics import STAT_KEYS
from rm_jax.evaluation.rewardbench import SECTIONS, SUBSET_COUNTS

LEVEL_KEYS = ("nll", "ece")  # attribute_metrics' keys for a head with level probabilities (docs/heads.md)


def _fmt(x: Optional[float], width: int, digits: int = 4) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def format_attribute_table(per_attribute: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = STAT_KEYS) -> str:
    """Fixed-width text table of attribute_metrics output (columns ``keys``, then ``nll`` and ``ece`` where a
    distributional head's rows have them); undefined values print as '-'."""
    keys = list(keys) + [k for k in LEVEL_KEYS if k not in keys and any(k in m for m in per_attribute.values())]
    name_w = max([len("attribute")] + [len(n) for n in per_attribute])
    header = f"{'attribute':<{name_w}} {'n':>7} " + " ".join(f"{k:>9}" for k in keys)
    lines = [header, "-" * len(header)]
    for name, m in per_attribute.items():
        cells = " ".join(_fmt(m.get(k), 9) for k in keys)
        lines.append(f"{name:<{name_w}} {int(m['n']):>7d} {cells}")
    return "\n".join(lines)


def _pct(x: Optional[float]) -> str:
    return f"{'-':>7}" if x is None else f"{100.0 * x:>7.2f}"


def format_rewardbench(result: Mapping[str, Any]) -> str:
    """Readable table of score_pairs output, accuracies in percent."""
    counts = result.get("subset_counts", {})
    lines = [f"{'subset':<26} {'acc %':>7} {'rows':>6} {'weight':>6}"]
    lines.append("-" * len(lines[0]))
    for section, members in SECTIONS.items():
        if section not in result["sections"]:
            continue
        lines.append(f"{'[' + section + ']':<26} {_pct(result['sections'][section])}")
        for sub in members:
            if sub in result["subsets"]:
                lines.append(
                    f"  {sub:<24} {_pct(result['subsets'][sub])} {counts.get(sub, 0):>6d} {SUBSET_COUNTS[sub]:>6d}"
                )
    if result.get("unknown_subsets"):
        lines.append("[not in any section]")
        for sub, acc in result["unknown_subsets"].items():
            lines.append(f"  {sub:<24} {_pct(acc)} {counts.get(sub, 0):>6d} {'-':>6}")
    lines.append("-" * len(lines[0]))
    lines.append(f"{'overall (mean of sections)':<26} {_pct(result.get('overall'))}")
    lines.append(f"{'pairs':<26} {int(result.get('n_pairs', 0)):>7d}")
    return "\n".join(lines)


def format_pairwise(pairwise: Mapping[str, Mapping[str, Any]], selected: Optional[str] = None) -> str:
    name_w = max([len("weights")] + [len(n) + 2 for n in pairwise])
    header = f"{'weights':<{name_w}} {'acc %':>7} {'pairs':>6} {'right':>6} {'ties':>6} {'skipped':>7}"
    lines = [header, "-" * len(header)]
    for name, r in pairwise.items():
        mark = "* " if name == selected else "  "
        lines.append(
            f"{mark + name:<{name_w}} {_pct(r['accuracy'])} {r['n_pairs']:>6d} {r['n_correct']:>6d} "
            f"{r['n_label_ties']:>6d} {r['n_skipped_groups']:>7d}"
        )
    return "\n".join(lines)


def format_presets(presets: Mapping[str, Mapping[str, Any]], selected: Optional[str] = None) -> str:
    sections = ("chat", "chat_hard", "safety", "reasoning")
    name_w = max([len("weights")] + [len(n) + 2 for n in presets])
    header = f"{'weights':<{name_w}} " + " ".join(f"{s:>9}" for s in sections) + f" {'overall':>9}"
    lines = [header, "-" * len(header)]
    for name, r in presets.items():
        mark = "* " if name == selected else "  "
        cells = " ".join(f"{_pct(r['sections'].get(s)):>9}" for s in sections)
        lines.append(f"{mark + name:<{name_w}} {cells} {_pct(r['overall']):>9}")
    return "\n".join(lines)


def format_rewardbench2(result: Mapping[str, Any], selected: Optional[str] = None) -> str:
    """RewardBench 2 subset scores (%) for ``--weights`` (the first column) and every preset."""
    presets = result.get("presets", {})
    names = [selected] if selected in presets else []
    names += [n for n in presets if n not in names]
    subsets = list(result["subsets"])
    sets = result.get("subset_sets", {})
    name_w = max([len("subset (sets)")] + [len(f"{s} ({sets.get(s, 0)})") for s in subsets] + [len("overall")])
    col_w = max([9] + [len(n) for n in names])
    header = f"{'subset (sets)':<{name_w}} {'*' + (selected or 'weights'):>{col_w}} " + " ".join(
        f"{n:>{col_w}}" for n in names[1:]
    )
    lines = [header, "-" * len(header)]

    def row(label: str, key: Optional[str]) -> str:
        main = result["score"] if key is None else result["subsets"][key]
        cells = [
            _pct(presets[n]["score"] if key is None else presets[n]["subsets"].get(key)).rjust(col_w) for n in names[1:]
        ]
        return f"{label:<{name_w}} {_pct(main).strip().rjust(col_w)} " + " ".join(c.strip().rjust(col_w) for c in cells)

    for sub in subsets:
        lines.append(row(f"{sub} ({sets.get(sub, 0)})", sub))
    lines.append("-" * len(header))
    lines.append(row("overall", None))
    return "\n".join(lines)


def format_report(result: Mapping[str, Any]) -> str:
    """Readable tables of a results dict (what ``rm-jax eval`` prints)."""
    label = result.get("weights", {}).get("label")
    parts = []
    counts = result.get("counts", {})
    if "per_attribute" in result:
        c = counts.get("helpsteer", {})
        parts.append(f"HelpSteer2-format rows: {_counts_line(c)}")
        if result["per_attribute"]:
            parts.append(format_attribute_table(result["per_attribute"]))
            # qwk is a statistic of the rounded predictions, so it is a column of their table
            rounded = {a: dict(m["rounded"], n=m["n"], qwk=m.get("qwk")) for a, m in result["per_attribute"].items()}
            excluded = sum(int(m.get("qwk_excluded") or 0) for m in result["per_attribute"].values())
            note = f" ({excluded} labels not an integer 0..4 left out of qwk)" if excluded else ""
            parts.append(
                f"predictions rounded to 0..4 (qwk: quadratic-weighted kappa){note}:\n"
                + format_attribute_table(rounded, STAT_KEYS + ("qwk",))
            )
        parts.append(
            "pairwise accuracy (more helpful response of a prompt gets the higher reward; "
            "* = --weights):\n" + format_pairwise(result["pairwise"], label)
        )
    if "rewardbench" in result:
        rb = result["rewardbench"]
        c = counts.get("rewardbench", {})
        parts.append(f"RewardBench-format pairs: {_counts_line(c)}; reward = {label}")
        parts.append(format_rewardbench(rb))
        if rb.get("n_reward_ties"):
            parts.append(f"{rb['n_reward_ties']} pairs with equal rewards (counted wrong)")
        parts.append("all reward-weight presets (section scores, %):\n" + format_presets(rb["presets"], label))
    if "rewardbench2" in result:
        c = counts.get("rewardbench2", {})
        keys = ("length_policy", "sets", "scored_sets", "completions", "truncated", "response_cut", "cut")
        keys += ("dropped_sets", "seq_len")
        line = ", ".join(f"{k} {c[k]}" for k in keys if k in c) or "-"
        rb2 = result["rewardbench2"]
        over = rb2.get("overall_over", list(rb2["subsets"]))
        parts.append(
            f"RewardBench 2: {line}; * = --weights ({label}); overall = mean of {len(over)} subsets "
            f"({', '.join(over)}); chance 25% best-of-4"
        )
        parts.append(format_rewardbench2(rb2, label))
        if rb2.get("empty_subsets"):
            parts.append(
                f"RewardBench 2 subsets with no set left (all dropped for length), not in the overall: "
                f"{', '.join(rb2['empty_subsets'])}"
            )
    for name in ("rm_bench", "judgebench", "helpsteer3"):
        if name in result:
            parts.append(format_yardstick(name, result[name], counts.get(name, {}), label))
    return "\n\n".join(parts)


def format_yardstick(name: str, rep: Mapping[str, Any], c: Mapping[str, Any], label: Optional[str]) -> str:
    """RM-Bench, JudgeBench or HelpSteer3 results: the headline, its parts, and every preset's headline (%)."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    keys = ("responses", "distinct_conversations", "truncated", "response_cut", "seq_len")
    counts = ", ".join(f"{k} {c[k]}" for k in keys if k in c) or "-"
    if name == "rm_bench":
        head = f"RM-Bench: {counts}; reward = {label}; a tie is wrong"
        body = [
            f"overall {pct(rep['overall'])}  (hard {pct(rep['hard'])}, normal {pct(rep['normal'])}, "
            f"easy {pct(rep['easy'])})",
            "domains: " + ", ".join(f"{d} {pct(v)} ({rep['rows'][d]} rows)" for d, v in rep["domains"].items()),
        ]
        if rep.get("missing_domains"):
            body.append(f"no rows (left out of every mean): {', '.join(rep['missing_domains'])}")
    elif name == "judgebench":
        head = f"JudgeBench (single game): {counts}; reward = {label}; a tie decides B>A"
        body = [
            f"overall {pct(rep['overall'])} over {rep['pairs']} pairs ({rep['ties']} reward ties)",
            "categories: "
            + ", ".join(f"{k} {pct(v)} ({rep['category_pairs'][k]})" for k, v in rep["categories"].items()),
        ]
    else:
        head = f"HelpSteer3-Preference: {counts}; reward = {label}; a tie is wrong"
        body = [
            f"accuracy {pct(rep['accuracy'])} over {rep['pairs']} pairs ({rep['ties_left_out']} ties left out)",
            "domains: " + ", ".join(f"{k} {pct(v)}" for k, v in rep["domains"].items()),
            "languages: " + ", ".join(f"{k} {pct(v)}" for k, v in rep["languages"].items()),
        ]
    body.append("presets: " + ", ".join(f"{k}{'*' if k == label else ''} {pct(v)}" for k, v in rep["presets"].items()))
    return "\n".join([head, *body])


def _counts_line(c: Mapping[str, Any]) -> str:
    keys = ("rows", "scored", "truncated", "dropped", "seq_len")
    return ", ".join(f"{k} {c[k]}" for k in keys if k in c) or "-"
