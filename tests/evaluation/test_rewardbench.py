import numpy as np
import pytest

from rm_jax.evaluation.report_text import format_rewardbench
from rm_jax.evaluation.rewardbench import SECTIONS, SUBSET_COUNTS, score_pairs


def _rows(subset, n, n_correct, n_reward_ties=0):
    """n pairs of `subset`: n_correct right, then n_reward_ties ties, the rest reversed."""
    chosen, rejected = [], []
    for i in range(n):
        if i < n_correct:
            chosen.append(1.0), rejected.append(0.0)
        elif i < n_correct + n_reward_ties:
            chosen.append(0.5), rejected.append(0.5)
        else:
            chosen.append(0.0), rejected.append(1.0)
    return [subset] * n, chosen, rejected


def _build(*groups):
    subsets, chosen, rejected = [], [], []
    for g in groups:
        s, c, r = _rows(*g)
        subsets += s
        chosen += c
        rejected += r
    return subsets, np.array(chosen), np.array(rejected)


def test_official_counts_and_sections():
    sums = {sec: sum(SUBSET_COUNTS[s] for s in subs) for sec, subs in SECTIONS.items()}
    # Reference: chat 100+95+95+28+40, chat-hard 37+100+134+92+47+46,
    # safety 100+100+154+250+136, reasoning 984 + 6*164.
    assert sums == {"chat": 358, "chat_hard": 456, "safety": 740, "reasoning": 1968}
    assert SUBSET_COUNTS["math-prm"] == 984
    for lang in ("cpp", "go", "java", "js", "python", "rust"):
        assert SUBSET_COUNTS[f"hep-{lang}"] == 164
    all_members = [s for subs in SECTIONS.values() for s in subs]
    assert sorted(all_members) == sorted(SUBSET_COUNTS)  # every subset in exactly one section


def test_section_scores_hand_computed():
    subsets, chosen, rejected = _build(
        ("alpacaeval-easy", 10, 9),  # 0.9
        ("mt-bench-med", 4, 2, 1),  # 0.5: two right, one reward tie (wrong), one reversed
        ("llmbar-natural", 2, 1),  # 0.5
        ("math-prm", 4, 3),  # 0.75
        ("hep-python", 2, 2),  # 1.0
        ("anthropic_helpful", 3, 0),  # prior set: no section
    )
    res = score_pairs(subsets, chosen, rejected)
    assert res["subsets"] == {
        "alpacaeval-easy": 0.9,
        "mt-bench-med": 0.5,
        "llmbar-natural": 0.5,
        "math-prm": 0.75,
        "hep-python": 1.0,
    }
    assert res["subset_counts"]["mt-bench-med"] == 4 and res["subset_counts"]["anthropic_helpful"] == 3
    chat = (0.9 * 100 + 0.5 * 40) / (100 + 40)  # = 110 / 140
    chat_hard = 0.5  # the only subset present, so its weight cancels
    reasoning = (0.75 * 984 + 1.0 * 164) / (984 + 164)  # = 902 / 1148
    assert set(res["sections"]) == {"chat", "chat_hard", "reasoning"}  # no safety rows -> absent
    assert res["sections"]["chat"] == pytest.approx(110 / 140, rel=1e-12)
    assert res["sections"]["chat"] == pytest.approx(chat, rel=1e-12)
    assert res["sections"]["chat_hard"] == pytest.approx(chat_hard, rel=1e-12)
    assert res["sections"]["reasoning"] == pytest.approx(reasoning, rel=1e-12)
    assert res["overall"] == pytest.approx((chat + chat_hard + reasoning) / 3, rel=1e-12)
    assert res["unknown_subsets"] == {"anthropic_helpful": 0.0}
    assert res["n_pairs"] == 10 + 4 + 2 + 4 + 2 + 3


def test_count_weighting_differs_from_row_weighting():
    # math-prm has 447 real rows but weighs 984: a row-weighted mean would give a different answer.
    subsets, chosen, rejected = _build(("math-prm", 2, 2), ("hep-go", 8, 0))
    res = score_pairs(subsets, chosen, rejected)
    assert res["sections"]["reasoning"] == pytest.approx(984 / (984 + 164), rel=1e-12)
    assert res["sections"]["reasoning"] != pytest.approx(2 / 10)


def test_strict_inequality_and_unknown_only():
    res = score_pairs(["prior-x", "prior-x"], [1.0, 2.0], [1.0, 1.0])
    assert res["unknown_subsets"] == {"prior-x": 0.5}
    assert res["sections"] == {} and res["subsets"] == {} and res["overall"] is None


def test_full_section_matches_paper_style_average():
    rng = np.random.default_rng(0)
    subsets, chosen, rejected = [], [], []
    accs = {}
    for sub in SECTIONS["safety"]:
        n = 20
        k = int(rng.integers(0, n + 1))
        s, c, r = _rows(sub, n, k)
        subsets += s
        chosen += c
        rejected += r
        accs[sub] = k / n
    res = score_pairs(subsets, chosen, rejected)
    want = sum(accs[s] * SUBSET_COUNTS[s] for s in accs) / 740
    assert res["sections"] == {"safety": pytest.approx(want, rel=1e-12)}
    assert res["overall"] == pytest.approx(want, rel=1e-12)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="length"):
        score_pairs(["math-prm", "math-prm"], [1.0, 2.0], [0.0])
    with pytest.raises(ValueError, match="length"):
        score_pairs(["math-prm"], [1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        score_pairs(["math-prm"], [[1.0]], [0.0])


def test_format_rewardbench():
    subsets, chosen, rejected = _build(("alpacaeval-easy", 10, 9), ("mt-bench-med", 4, 2), ("prior-x", 2, 1))
    res = score_pairs(subsets, chosen, rejected)
    text = format_rewardbench(res)
    assert "[chat]" in text and "[safety]" not in text
    assert f"{100 * 110 / 140:.2f}" in text  # section score in percent
    assert "prior-x" in text and "not in any section" in text
    overall_line = next(line for line in text.splitlines() if line.startswith("overall"))
    assert f"{100 * 110 / 140:.2f}" in overall_line
