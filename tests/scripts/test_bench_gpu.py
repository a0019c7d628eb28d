"""scripts/bench_gpu.py's memory sections, without a GPU: the RunConfig `rm-jax plan` sizes is the model and step
the bench times, the plan floor's arithmetic, the largest-first ladder search, and the summary lines."""

from __future__ import annotations

import argparse
import os
import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))  # how the scripts themselves find bench_common

import bench_gpu as bg  # noqa: E402
from bench_common import largest_fitting, plan_within  # noqa: E402


def _args(**kw) -> argparse.Namespace:
    base = dict(smoke=True, seq_len=256, rows=2, max_segments=16, remat="dots_no_batch", no_scan=False)
    base.update(ft_remat="full", lora_rank=16)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("kind", ["rm_jax", "rm_jax_lora", "full_ft"])
def test_plan_sizes_the_model_and_step_the_bench_runs(kind):
    from rm_jax.training.plan import planned_decoder

    a = _args()
    train = {}
    if kind == "rm_jax":
        cfg = bg.model_config(a, "xla")
    elif kind == "rm_jax_lora":
        cfg = bg.model_config(a, "xla", lora=True).replace(lora_rank=a.lora_rank, lora_alpha=2.0 * a.lora_rank)
    else:
        cfg, train = bg._ft_config(a, bg.ft_ladder(True)[1][1]), bg.FT_OPTIONS["adamw_bf16"]
    rc = bg.bench_run_config(a, cfg, a.rows, **train)
    got, _ = planned_decoder(rc)
    assert got == cfg  # the same model: architecture, remat, scan, attention kernel, LoRA
    assert (rc.train.lr, rc.train.warmup_steps, rc.train.batch_rows, rc.train.grad_accum) == (1e-5, 0, a.rows, 1)
    assert (rc.data.seq_len, rc.data.max_segments, rc.data.packing) == (a.seq_len, a.max_segments, True)
    assert rc.lora.base_dtype == ("bfloat16" if kind == "rm_jax_lora" else "float32")
    if train:
        assert rc.train.optimizer_state_dtype == "bfloat16"


def test_plan_floor_is_two_sided_and_ignores_unmeasured_sections():
    assert plan_within({"rm_jax:auto": 1.14, "rm_jax_lora:auto": 0.86})["met"] is True
    assert plan_within({"rm_jax:auto": 1.16})["met"] is False  # the plan too high
    assert plan_within({"rm_jax:auto": 1.0, "rm_jax_lora:auto": 0.84})["met"] is False  # too low: a run OOMs
    assert plan_within({"rm_jax:auto": 1.05, "rm_jax_lora:auto": None})["met"] is True
    assert plan_within({"rm_jax:auto": None})["met"] is None
    assert plan_within({})["met"] is None


def test_ladder_search_compiles_only_what_could_fit_and_stops_at_the_first_fit():
    floors = {"70b": 500, "12b": 150, "8b": 90, "3b": 40, "1b": 10}
    totals = {"12b": 170, "8b": 120, "3b": 60, "1b": 20}
    planned = []

    def plan(rung):
        planned.append(rung)
        return {"plan_total_bytes": totals[rung]}

    idx, tried = largest_fitting(list(floors), floors.get, plan, limit=100)
    assert idx == 3 and planned == ["8b", "3b"]  # 70b and 12b: over on state alone, never compiled
    assert [t["compiled"] for t in tried] == [False, False, True, True]
    assert [t["fits"] for t in tried] == [False, False, False, True]
    assert tried[3]["plan_total_bytes"] == 60
    assert largest_fitting(["x"], lambda r: 1, lambda r: {"plan_total_bytes": 200}, limit=100)[0] is None


def test_derive_checks_the_plan_floor_on_auto_and_the_lora_section():
    res = {
        "sections": {
            "rm_jax:auto": {"plan_vs_peak": 1.05, "plan_total_bytes": 31 * 2**30, "peak_bytes": 30 * 2**30},
            "rm_jax:xla": {"plan_vs_peak": 1.6},  # not a floor section
            "rm_jax_lora:auto": {"tokens_per_s": 1.0, "plan_vs_peak": 0.7},
        }
    }
    bg.derive(res)
    floor = res["floors"]["plan_within_15pct"]
    assert floor["value"] == {"rm_jax:auto": 1.05, "rm_jax_lora:auto": 0.7} and floor["met"] is False
    res["sections"]["rm_jax_lora:auto"]["plan_vs_peak"] = 0.9
    bg.derive(res)
    assert res["floors"]["plan_within_15pct"]["met"] is True


def test_summary_lines_for_every_full_ft_outcome():
    rung = {"name": "big", "compiled": False, "lower_bound_bytes": 2**40, "fits": False}
    ok = {"name": "small", "compiled": True, "lower_bound_bytes": 2**30, "plan_total_bytes": 2**31, "fits": True}
    common = {"card_bytes": 2**36, "remat": "full", "seq_len": 4096, "card_from": "pretend card (--smoke)"}
    sections = {
        "full_ft:adamw": {**common, "ladder": [rung, ok], "model": "small", "tokens_per_s": 1e4, "peak_bytes": 2**31}
        | {"plan_vs_peak": 1.0},
        "full_ft:adamw_bf16": {**common, "ladder": [rung, ok], "model": "small", "run_error": "XlaRuntimeError: OOM"},
        "full_ft:adafactor": {**common, "ladder": [rung], "skipped": "no rung of the ladder fits"},
        "full_ft:adamw_host": {"skipped": "train.optimizer_state_memory: not available in this build"},
    }
    text = "\n".join(bg.memory_lines(sections))
    assert "big state 1024.00 GiB, small plan 2.00 GiB fits; ran small: 10,000 tok/s" in text
    assert "plan/peak 1.000" in text and "run of small FAILED: XlaRuntimeError: OOM" in text
    assert "none fits" in text and "not available in this build" in text and "card 64.00 GiB pretend" in text
    assert "| full_ft" not in bg.table({"sections": sections})  # not rows of the speed table


def test_full_ft_option_the_build_lacks_is_listed_but_skipped(monkeypatch):
    monkeypatch.setitem(bg.FT_OPTIONS, "offloaded", {"optimizer": "adamw", "no_such_train_field": "host"})
    got = bg.section_full_ft(_args(), "offloaded")
    assert "not available in this build" in got["skipped"] and "train.no_such_train_field" in got["skipped"]
    with pytest.raises(ValueError, match="unknown full_ft option"):
        bg.section_full_ft(_args(), "sgd")
    assert "full_ft:adamw_host" in bg.PLAN_GROUPS["full_ft"]


def test_big_rm_group_runs_the_sections_each_floor_needs():
    # Each floor is derived from a pair of sections; a group missing one leaves its floor silently unmeasured.
    floor_sections = {
        "auto_vs_torch_packed": {"rm_jax:auto", "torch_packed"},
        "lora_vs_torch_peft": {"rm_jax_lora:auto", "torch_peft"},
        "plan_within_15pct": {"rm_jax:auto", "rm_jax_lora:auto"},
    }
    group = set(bg.PLAN_GROUPS["big_rm"])
    for floor, need in floor_sections.items():
        assert floor in bg.FLOORS and need <= group, floor
    for name in group:  # every member dispatches to a section
        assert name in bg.SECTIONS or name.startswith(("rm_jax:", "rm_jax_lora:")), name


def test_score_floor_divides_rm_jax_bf16_by_the_best_bf16_transformers_run():
    s = {
        "score:1b": {
            "runs": {"rm_jax_bfloat16": {"real_tokens_per_s": 300.0}, "rm_jax_float32": {"real_tokens_per_s": 90.0}}
        },
        "torch_score:1b": {
            "runs": {
                "torch_bf16_sdpa_sorted": {"real_tokens_per_s": 100.0},
                "torch_bf16_flash_attention_2_packed": {"real_tokens_per_s": 150.0},
                "torch_float32_sdpa_sorted": {"real_tokens_per_s": 10.0},  # not a bf16 baseline
                "torch_bf16_flash_attention_2_sorted": {"error": "ImportError"},
            }
        },
        "score:8b": {"runs": {"rm_jax_bfloat16": {"real_tokens_per_s": 10.0}}},
    }
    got = bg.score_floors(s)
    assert got["score_1b_vs_best_torch"] == {
        "value": 2.0, "floor": 2.0, "met": True, "best": "torch_bf16_flash_attention_2_packed"
    }  # fmt: skip
    assert got["score_8b_vs_best_torch"]["met"] is None  # no transformers run: unmeasured, never met
    assert set(bg.PLAN_GROUPS["score"]) == {"score:1b", "torch_score:1b", "score:8b", "torch_score:8b"}


def test_share_sections_call_bench_share_on_the_1b_shape(monkeypatch):
    import json

    import bench_share
    from bench_common import parse_overrides

    seen = []

    def fake_main(argv):  # bench_share's entry point: records what the section asks for, prints its JSON
        seen.append(argv)
        print(json.dumps({"shapes": {"groups8": {"speedup": 2.6}}, "environment": {}}))
        return 1

    monkeypatch.setattr(bench_share, "main", fake_main)
    a = _args(smoke=False, share_seq_len=2048, share_rows=4, share_prompts=None, share_dtype=None, seed=0)
    a.share_steps = "fill"
    got = bg.section_share(a, "train:groups8")
    assert got["shapes"] == {"groups8": {"speedup": 2.6}} and got["bench_share_exit"] == 1
    argv = seen[-1]
    assert argv[argv.index("--batch-rows") + 1] == "8"  # a step holds a whole group of 8
    assert argv[-5:] == ["--train", "--shapes", "groups8", "--shared-steps", "fill"]
    assert argv[argv.index("--seq-len") + 1] == "2048"
    model = parse_overrides(argv[argv.index("--model") + 1])
    want = {k: v for k, v in bg.arch(False).items() if k in model and k != "max_position_embeddings"}
    assert len(want) >= 9 and all(model[k] == want[k] for k in want)  # Llama-3.2-1B's body
    assert (model["hidden_size"], model["num_hidden_layers"], model["dtype"]) == (2048, 16, "bfloat16")
    assert (model["attention"], model["remat"], model["scan_layers"]) == ("auto", "dots_no_batch", True)
    bg.section_share(a, "score")
    assert "--train" not in seen[-1] and seen[-1][seen[-1].index("--batch-rows") + 1] == "4"
    assert seen[-1][-1] == ",".join(bg.SHARE_SHAPES)


def test_share_floors_read_the_issue_31_figures_per_shape_and_from_the_smoke_section():
    s = {
        "share:score": {"shapes": {"rb2": {"speedup": 1.7, "auto_speedup": 1.5}, "short": {"auto_speedup": 0.9}}},
        "share:train:long_pairs": {"shapes": {"long_pairs": {"speedup": 1.4}}},
        "share:train": {"shapes": {"helpsteer2": {"speedup": 1.2}}},  # --smoke: every shape in one section
    }
    f = bg.share_floors(s)
    assert f["share_score_rb2"] == {"value": 1.7, "floor": 1.6, "met": True}  # share=True, not auto
    assert f["share_score_short_auto"]["met"] is False  # the default must not be slower on short prompts
    assert f["share_train_long_pairs"] == {"value": 1.4, "floor": 1.5, "met": False}
    assert f["share_train_helpsteer2"]["met"] is True
    assert f["share_score_groups8"]["met"] is None and f["share_train_groups8"]["met"] is None  # not run: unmeasured
    assert set(bg.PLAN_GROUPS["share"]) == {"share:score"} | {f"share:train:{k}" for k in bg.SHARE_SHAPES}
