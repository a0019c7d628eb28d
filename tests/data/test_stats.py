"""rm_jax.data.stats: Table 2 statistics agree with numpy/scipy; turns counted on multi-turn prompts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from rm_jax.data.sources import load_helpsteer
from rm_jax.data.stats import format_stats_table, helpsteer_stats, token_length_stats

ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
A, U = "\n<extra_id_1>Assistant\n", "\n<extra_id_1>User\n"


def generated_rows(n: int = 120, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        turns = int(rng.choice([1, 3, 5]))
        prompt = f"q{i // 2}" + "".join(f"{A}a{k}{U}q{k}" for k in range(turns // 2))
        help_ = int(rng.integers(0, 5))
        labels = [help_, int(np.clip(help_ + rng.integers(-1, 2), 0, 4))] + [int(x) for x in rng.integers(0, 5, 3)]
        if i % 11 == 3:
            labels[1] = -100  # missing correctness
        if i % 17 == 5:
            labels[0] = None  # missing helpfulness
        rows.append({"prompt": prompt, "response": "r" * int(rng.integers(1, 300)), **dict(zip(ATTRS, labels))})
    return rows


@pytest.fixture()
def loaded(tmp_path):
    path = tmp_path / "gen.jsonl"
    rows = generated_rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows, load_helpsteer(str(path)).rows


def reference_column(raw: list[dict], name: str) -> np.ndarray:
    if name == "turns":
        return np.array([1 + 2 * r["prompt"].count(A) for r in raw], dtype=float)
    if name == "prompt_chars":
        return np.array([len(r["prompt"]) for r in raw], dtype=float)
    if name == "response_chars":
        return np.array([len(r["response"]) for r in raw], dtype=float)
    return np.array([np.nan if r[name] in (None, -100) else r[name] for r in raw], dtype=float)


def test_stats_agree_with_numpy_and_scipy(loaded):
    raw, rows = loaded
    out = helpsteer_stats(rows)
    assert set(out) == {"rows", "prompts", "stats"}
    assert out["rows"] == len(raw) and out["prompts"] == len({r["prompt"] for r in raw})
    names = [*ATTRS, "turns", "prompt_chars", "response_chars"]
    assert list(out["stats"]) == names
    h = reference_column(raw, "helpfulness")
    for name in names:
        x = reference_column(raw, name)
        s = out["stats"][name]
        assert set(s) == {"mean", "std", "pearson_helpfulness"}
        assert s["mean"] == pytest.approx(np.nanmean(x), abs=1e-6)
        assert s["std"] == pytest.approx(np.std(x[~np.isnan(x)], ddof=1), abs=1e-6)
        both = ~np.isnan(x) & ~np.isnan(h)
        assert s["pearson_helpfulness"] == pytest.approx(sps.pearsonr(x[both], h[both]).statistic, abs=1e-6)
    json.dumps(out, allow_nan=False)  # the CLI prints it as JSON


def test_turn_counting_on_multi_turn_prompts():
    rows = [
        {"prompt": "hi", "response": "x", **dict.fromkeys(ATTRS, 2)},
        {"prompt": f"hi{A}hello{U}how are you?", "response": "x", **dict.fromkeys(ATTRS, 3)},
        {"prompt": f"a{A}b{U}c{A}d{U}e", "response": "x", **dict.fromkeys(ATTRS, 4)},
    ]
    s = helpsteer_stats(rows)["stats"]["turns"]
    assert s["mean"] == pytest.approx(3.0) and s["std"] == pytest.approx(2.0)
    assert s["pearson_helpfulness"] == pytest.approx(1.0)


def test_undefined_values_are_none():
    rows = [{"prompt": "p", "response": "x", **dict.fromkeys(ATTRS, 2)}]
    s = helpsteer_stats(rows)["stats"]
    assert s["helpfulness"]["mean"] == 2.0 and s["helpfulness"]["std"] is None
    assert s["verbosity"]["pearson_helpfulness"] is None


def test_token_length_stats():
    lengths = [5, 9, 13, 40, 2, 77, 31]
    s = token_length_stats(lengths)
    assert list(s) == ["mean", "std", "min", "p50", "p90", "p99", "max"]
    x = np.array(lengths, dtype=float)
    assert s["mean"] == pytest.approx(x.mean()) and s["std"] == pytest.approx(x.std(ddof=1))
    assert (s["min"], s["max"]) == (2, 77)
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert s[key] == pytest.approx(np.percentile(x, q))
    with pytest.raises(ValueError):
        token_length_stats([])


def test_format_stats_table(loaded):
    _, rows = loaded
    out = helpsteer_stats(rows)
    table = format_stats_table(out)
    assert "| quantity | mean | std | Pearson r with helpfulness |" in table
    assert f"rows: {out['rows']}" in table
    line = next(x for x in table.splitlines() if x.startswith("| prompt chars |"))
    assert f"{out['stats']['prompt_chars']['mean']:.1f}" in line
    assert "| turns in prompt |" in table and "| helpfulness | " in table
    assert not math.isnan(out["stats"]["correctness"]["mean"])
    assert format_stats_table(out["stats"]).startswith("| quantity")


def test_helpsteer3_stats_per_domain_and_language_with_ties(tmp_path):
    from rm_jax.data.helpsteer3_pairs import iter_helpsteer3
    from rm_jax.data.stats import helpsteer3_stats

    ctx2 = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]
    raw = [
        {"domain": "code", "language": "english", "context": [{"role": "user", "content": "xyz"}],
         "response1": "aa", "response2": "bbbb", "overall_preference": -2},
        {"domain": "code", "language": "english", "context": ctx2,
         "response1": "a", "response2": "b", "overall_preference": 0},
        {"domain": "multilingual", "language": "french", "context": [{"role": "user", "content": "q"}],
         "response1": "r", "response2": "ss", "overall_preference": 3},
    ]  # fmt: skip
    p = tmp_path / "hs3.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in raw))
    s = helpsteer3_stats(list(iter_helpsteer3(str(p))))
    assert s["rows"] == 3 and s["ties"] == 1 and s["contexts"] == 3
    assert s["preference_histogram"] == {"-3": 0, "-2": 1, "-1": 0, "0": 1, "1": 0, "2": 0, "3": 1}
    code = s["domains"]["code"]
    assert code["rows"] == 2 and code["turns_mean"] == 2.0  # 1 and 3 turns
    assert code["context_chars_mean"] == (3 + 4) / 2 and code["response_chars_mean"] == (2 + 4 + 1 + 1) / 4
    assert s["languages"]["french"]["preference_histogram"]["3"] == 1
