"""Mutation check: plant one bug per guarantee in a temporary copy of the repository and run the tests that
back that guarantee; every mutation must make them fail ("killed"). A mutation whose tests still pass
("SURVIVED") is a guarantee the suite does not hold.

    python scripts/mutation_check.py              # all mutations, one at a time
    python scripts/mutation_check.py --jobs 2     # two copies at once
    python scripts/mutation_check.py --list       # what is planted where, and which tests run
    python scripts/mutation_check.py --only rope_sign --only bt_sign

Each mutation is an exact source-snippet replacement; a snippet that no longer matches exactly once (the
code moved on) is reported as STALE, so the list cannot silently stop planting anything. The unmutated copy
runs the same tests first (the baseline): a test that fails without a bug would "kill" every mutation.
Exit status 0 only when the baseline passes and every mutation is killed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    guarantee: str
    edits: tuple[tuple[str, str, str], ...]  # (path, exact old snippet, new snippet)
    tests: tuple[str, ...]  # pytest node ids, run with -x


RESUME_RM = "tests/integration/test_resume.py::test_sigkill_after_checkpoint_resumes_not_restarts[rm]"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "pooling_off_by_one",
        "the reward head reads each conversation's last token",
        (
            (
                "rm_jax/models/llama.py",
                "return jax.ops.segment_max(idx, seg, num_segments=max_segments + 1)[1:]",
                "return jax.ops.segment_max(idx, seg, num_segments=max_segments + 1)[1:] - 1",
            ),
        ),
        ("tests/models/test_llama_parity.py::test_single_rows",),
    ),
    Mutation(
        "rope_sign",
        "rotary embeddings match transformers (rotate_half)",
        (
            (
                "rm_jax/models/llama.py",
                "rotated = jnp.concatenate([-x2, x1], axis=-1)",
                "rotated = jnp.concatenate([x2, -x1], axis=-1)",
            ),
        ),
        ("tests/models/test_llama_parity.py::test_single_rows",),
    ),
    Mutation(
        "segment_mask_dropped",
        "packed conversations do not attend to each other",
        (
            (
                "rm_jax/models/attention.py",
                "return allowed[None] & (qs[:, :, None] == ks[:, None, :])",
                "return allowed[None] & (qs[:, :, None] == qs[:, :, None])",
            ),
        ),
        ("tests/models/test_llama_parity.py::test_packed_rows_score_each_conversation_as_alone",),
    ),
    Mutation(
        "positions_not_reset",
        "positions restart at 0 in each packed conversation",
        (
            (
                "rm_jax/data/packing.py",
                "positions[r, start:end] = np.arange(t.size, dtype=np.int32)",
                "positions[r, start:end] = np.arange(start, start + t.size, dtype=np.int32)",
            ),
        ),
        ("tests/data/test_packing.py::test_packed_layout_matches_slow_rederivation",),
    ),
    Mutation(
        "labels_not_masked",
        "SFT loss on response tokens only (prompts, pads, boundaries masked)",
        (
            (
                "rm_jax/data/packing.py",
                "mask[:, :-1] = same & (pos[:, 1:] >= start[:, :-1])",
                "mask[:, :-1] = same",
            ),
        ),
        ("tests/data/test_sft.py::test_targets_and_mask_on_a_hand_built_packed_row",),
    ),
    Mutation(
        "bt_sign",
        "Bradley-Terry loss prefers the chosen response",
        (
            (
                "rm_jax/engine/losses.py",
                '        loss = -jax.nn.log_sigmoid(diff)\n    elif kind == "margin_bt":',
                '        loss = -jax.nn.log_sigmoid(-diff)\n    elif kind == "margin_bt":',
            ),
        ),
        ("tests/integration/test_pairs.py::test_pair_losses_against_numpy",),
    ),
    Mutation(
        "steerlm2_baseline_sign",
        "SteerLM 2.0 gradient weights are w - b",
        (
            (
                "rm_jax/engine/losses.py",
                "term = jnp.where(valid, (w - b) * seq_logp, 0.0)",
                "term = jnp.where(valid, (b - w) * seq_logp, 0.0)",
            ),
        ),
        ("tests/engine/test_losses.py::test_loss_value_baseline_kl_and_ess_against_numpy",),
    ),
    Mutation(
        "reward_weight_order",
        "reward presets in HelpSteer2 attribute order",
        (
            (
                "rm_jax/core/attributes.py",
                '"70b-rewardbench": (0.65, 0.8, 0.45, 0.55, -0.4),',
                '"70b-rewardbench": (0.8, 0.65, 0.45, 0.55, -0.4),',
            ),
        ),
        ("tests/evaluation/test_metrics.py::test_rewards_from_attributes_presets",),
    ),
    Mutation(
        "reward_tie_counted_right",
        "a reward tie is a wrong pair in pairwise accuracy",
        (
            (
                "rm_jax/evaluation/metrics.py",
                "n_correct += int(rewards[better] > rewards[worse])",
                "n_correct += int(rewards[better] >= rewards[worse])",
            ),
        ),
        ("tests/evaluation/test_metrics.py::test_pairwise_accuracy_hand_built",),
    ),
    Mutation(
        "non_atomic_write",
        "a killed write leaves the old file or the new one",
        (
            (
                "rm_jax/core/files.py",
                'with open(tmp, "w", encoding="utf-8", newline="") as f:',
                'with open(path, "w", encoding="utf-8", newline="") as f:',
            ),
            ("rm_jax/core/files.py", "        os.replace(tmp, path)\n", "        pass\n"),
        ),
        ("tests/integration/test_torn_writes.py",),
    ),
    Mutation(
        "lock_not_taken",
        "one writer per run folder",
        (
            (
                "rm_jax/runs/lock.py",
                "            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
                "            pass\n",
            ),
        ),
        ("tests/runs/test_lock.py",),
    ),
    Mutation(
        "sweep_member_unlocked",
        "the same sweep task started twice leaves one clean run",
        (
            (
                "rm_jax/sweeps/runner.py",
                "    with hold_run_folder(run.run_dir, wait, enabled=main):",
                "    with hold_run_folder(run.run_dir, wait, enabled=False):",
            ),
            (
                "rm_jax/training/run.py",
                "with hold_run_folder(os.path.abspath(cfg.run_dir), wait, enabled=jax.process_index() == 0):",
                "with hold_run_folder(os.path.abspath(cfg.run_dir), wait, enabled=False):",
            ),
        ),
        ("tests/integration/test_run_lock.py",),
    ),
    Mutation(
        "lock_takeover_silent",
        "a lock left by a dead process is taken over and said so",
        (("rm_jax/runs/lock.py", "        if left:\n", "        if left and False:\n"),),
        ("tests/runs/test_lock.py::test_a_killed_holder_is_taken_over_and_said_so",),
    ),
    Mutation(
        "skipped_checkpoint_restore",
        "a re-run resumes from the latest checkpoint",
        (
            (
                "rm_jax/engine/checkpoint.py",
                "    def latest_step(self) -> Optional[int]:\n        return self.manager.latest_step()",
                "    def latest_step(self) -> Optional[int]:\n        return None",
            ),
        ),
        (RESUME_RM,),
    ),
    Mutation(
        "metrics_not_cut_on_resume",
        "after a resume each step is logged once",
        (
            (
                "rm_jax/training/logs.py",
                "kept = [ln for ln in lines if _json_step(ln) is not None and _json_step(ln) <= resume_step]",
                "kept = lines",
            ),
        ),
        (RESUME_RM,),
    ),
    Mutation(
        "step_ignored",
        "score / eval of a run folder at --step read that checkpoint",
        (
            (
                "rm_jax/runs/read.py",
                "cfg, params, meta, tok = load_run(path, mesh, dtype, step)",
                "cfg, params, meta, tok = load_run(path, mesh, dtype, None)",
            ),
        ),
        ("tests/integration/test_trained_rm_folder.py::test_score_export_and_eval_at_kept_and_explicit_steps",),
    ),
    Mutation(
        "step_args_dropped",
        "a sweep's sample step runs with the member's arguments",
        (
            (
                "rm_jax/sweeps/pipeline_steps.py",
                '**{k: v for k, v in args.items() if k not in ("policy", "input")},',
                "**{},",
            ),
        ),
        ("tests/sweeps/test_pipeline_steps.py::test_real_step_functions_on_tiny_models",),
    ),
    Mutation(
        "debug_hides_typed_error",
        "--debug shows the typed error's own traceback",
        (
            (
                "rm_jax/cli/__init__.py",
                '        if debug:\n            raise\n        print(f"rm-jax {cmd}: error: {_one_line(str(e))}"',
                "        if debug:\n            raise RuntimeError(str(e))\n"
                '        print(f"rm-jax {cmd}: error: {_one_line(str(e))}"',
            ),
        ),
        ("tests/integration/test_failures.py::test_truncated_download_is_one_line",),
    ),
    Mutation(
        "ctrl_c_exit_code",
        "Ctrl-C exits 130 with one line",
        (("rm_jax/cli/__init__.py", "        return 130\n", "        return 1\n"),),
        ("tests/integration/test_cli_process.py::test_ctrl_c_exits_130_with_one_line",),
    ),
    Mutation(
        "usage_exit_code",
        "usage errors exit 2",
        (("rm_jax/cli/__init__.py", "        return 0 if argv else 2\n", "        return 0\n"),),
        ("tests/integration/test_cli_process.py::test_usage_errors_exit_2",),
    ),
    Mutation(
        "gqa_probe_optimistic",
        "cuDNN GQA offsets: an unknown JAX gets the safe rule",
        (
            (
                "rm_jax/models/cudnn.py",
                "    except Exception:\n        return False\n",
                "    except Exception:\n        return True\n",
            ),
        ),
        ("tests/models/test_kernels.py::test_gqa_offset_probe",),
    ),
    Mutation(
        "qwk_linear_weights",
        "agreement is quadratic-weighted kappa, as the HelpSteer2 annotators' figures",
        (
            (
                "rm_jax/evaluation/metrics.py",
                "w = (i[:, None] - i[None, :]) ** 2.0",
                "w = np.abs(i[:, None] - i[None, :]) * 1.0",
            ),
        ),
        ("tests/evaluation/test_metrics.py::test_qwk_matches_sklearn_with_mask",),
    ),
    Mutation(
        "weight_fit_fold_by_pair",
        "weights fit: every pair of a prompt (RB2 ref:K with tied:K) in one cross-validation fold",
        (
            (
                "rm_jax/evaluation/weight_fit.py",
                "group = np.asarray([index.setdefault(p, len(index)) for p in prompt_ids], np.int64)",
                "group = np.asarray([index.setdefault(str(i), len(index)) for i in range(len(prompt_ids))], np.int64)",
            ),
        ),
        (
            "tests/evaluation/test_weight_fit.py::test_rewardbench2_folds_never_split_a_prompt",
            "tests/evaluation/test_weight_fit.py::test_bundled_rewardbench2_folds_and_prompt_weights",
        ),
    ),
    Mutation(
        "weights_by_position",
        "reward weights (W.json, presets) are matched to the model's attributes by name, not HelpSteer2's order",
        (
            (
                "rm_jax/core/attributes.py",
                "        w = np.asarray([values.get(a, 0.0) for a in attributes], dtype=np.float64)",
                "        w = np.asarray([values.get(a, 0.0) for a in ATTRIBUTES][: len(attributes)], dtype=np.float64)",
            ),
        ),
        (
            "tests/core/test_attributes.py::test_w_json_naming_only_helpfulness_weighs_the_helpfulness_column",
            "tests/core/test_attributes.py::test_presets_are_matched_by_name",
        ),
    ),
    Mutation(
        "joint_pair_weight_ignored",
        "loss.pair_weight: the joint loss is pointwise + lambda * BT",
        (
            (
                "rm_jax/engine/train_step.py",
                '"num": point["num"] / d_point + pair_weight * pair["num"] / d_pair,',
                '"num": point["num"] / d_point + pair["num"] / d_pair,',
            ),
        ),
        ("tests/engine/test_train_step_joint.py::test_first_step_loss_is_pointwise_plus_lambda_bt",),
    ),
    Mutation(
        "joint_per_micro_batch_norms",
        "loss.pair_weight: both parts normalised by the whole step's totals, so accumulation is exact",
        (
            (
                "rm_jax/engine/train_step.py",
                "norms = joint_norms(batch, attr_w) if joint else None",
                "norms = None",
            ),
        ),
        ("tests/engine/test_train_step_joint.py::test_first_step_loss_is_pointwise_plus_lambda_bt",),
    ),
    Mutation(
        "prompt_pairs_reversed",
        "loss.pair_weight: the response with the higher helpfulness label is the chosen one",
        (("rm_jax/data/pipeline.py", "(i, j) if y[i] > y[j] else (j, i)", "(i, j) if y[i] < y[j] else (j, i)"),),
        (
            "tests/data/test_pipeline.py::test_prompt_pair_units_order_by_helpfulness_and_leave_out_ties_and_missing",
            "tests/engine/test_train_step_joint.py::test_first_step_loss_is_pointwise_plus_lambda_bt",
        ),
    ),
    Mutation(
        "reward_head_row_first",
        "loss.pair_target separate: the reward output is score.weight's last row (the last logit)",
        (
            (
                "rm_jax/models/hf_io.py",
                "out = np.concatenate([out, reward_row])",
                "out = np.concatenate([reward_row, out])",
            ),
        ),
        ("tests/models/test_hf_io.py::test_reward_head_is_the_last_logit_and_scores_as_weights_reward_head",),
    ),
    Mutation(
        "ordinal_unordered",
        "ordinal head: thresholds ordered by construction, so P(y > k) never increases with k",
        (
            (
                "rm_jax/models/heads.py",
                "    gaps = jax.nn.softplus(raw[..., 1:])\n",
                "    return raw\n",
            ),
        ),
        (
            "tests/models/test_heads.py::test_ordinal_thresholds_increase_for_any_free_parameters",
            "tests/models/test_heads.py::test_ordinal_model_rows_are_non_increasing_and_probabilities_match",
        ),
    ),
    Mutation(
        "categorical_expectation_off_by_one",
        "categorical head: the attribute score is E[y] = sum_k k p_k over levels 0..K-1",
        (
            (
                "rm_jax/models/heads.py",
                "jnp.arange(raw.shape[-1], dtype=jnp.float32)",
                "jnp.arange(1, raw.shape[-1] + 1, dtype=jnp.float32)",
            ),
        ),
        ("tests/models/test_heads.py::test_categorical_expected_level_is_sum_k_pk",),
    ),
    Mutation(
        "lora_scale_alpha_not_over_r",
        "the LoRA update is scaled by alpha / r (PEFT's scaling)",
        (
            (
                "rm_jax/models/llama.py",
                "if self.lora_rslora else self.lora_rank)\n",
                "if self.lora_rslora else 1)\n",
            ),
        ),
        (
            "tests/models/test_lora.py::test_adapters_add_the_hand_computed_update[alpha_over_r]",
            "tests/models/test_lora.py::test_peft_adapter_scores_as_peft[alpha_over_r]",
        ),
    ),
    Mutation(
        "rslora_scale_as_plain_lora",
        "rsLoRA (use_rslora, lora.rslora) scales by alpha / sqrt(r)",
        (
            (
                "rm_jax/models/llama.py",
                "(math.sqrt(self.lora_rank) if self.lora_rslora else self.lora_rank)\n",
                "self.lora_rank\n",
            ),
        ),
        (
            "tests/models/test_lora.py::test_adapters_add_the_hand_computed_update[rslora]",
            "tests/models/test_lora.py::test_peft_adapter_scores_as_peft[rslora]",
        ),
    ),
    Mutation(
        "peft_unused_tensor_ignored",
        "a PEFT adapter tensor rm_jax does not apply stops the import",
        (("rm_jax/models/lora.py", "    if unused:\n", "    if False:\n"),),
        ("tests/models/test_lora.py::test_every_tensor_is_applied_or_the_import_stops",),
    ),
    Mutation(
        "drawn_ids_ignored",
        "log Q' and training score the token ids a policy drew, not a re-encoding of their text",
        (
            (
                "rm_jax/data/drawn_tokens.py",
                "given = [None] * n if response_ids is None else list(response_ids)",
                "given = [None] * n",
            ),
        ),
        (
            "tests/data/test_drawn_tokens.py::test_drawn_ids_are_scored_even_when_their_text_re_encodes_otherwise",
            "tests/data/test_steer_groups.py::test_groups_carry_the_drawn_ids_and_training_encodes_them",
        ),
    ),
    Mutation(
        "shared_steps_planned_shared",
        "shared_steps: same plans the epoch at unshared lengths: a shared run's steps hold the unshared run's examples",
        (("rm_jax/data/pipeline.py", "            if self.fill:\n", "            if self.share:\n"),),
        ("tests/data/test_pipeline.py::test_shared_steps_same_hold_the_unshared_examples_in_fewer_rows",),
    ),
    Mutation(
        "pallas_sees_sibling",
        "the Pallas shared-prompt kernel never lets a response attend to a sibling response",
        (
            (
                "rm_jax/models/pallas_shared.py",
                "ok = (qi >= ki) & ((qs == ks) | ((qg > 0) & (ks == -qg)))",
                "ok = (qi >= ki) & ((qs == ks) | ((qg > 0) & ((ks == -qg) | (ks >= qg))))",
            ),
        ),
        ("tests/models/test_pallas_shared.py::test_float32_forward_and_gradients_match_the_dense_softmax",),
    ),
    Mutation(
        "pallas_skips_visible_block",
        "the Pallas kernel's block skipping reads every key block a query block can see (the prompt's last one)",
        (
            (
                "rm_jax/models/pallas_shared.py",
                "a_hi = -(-p_hi.reshape(b, nb, block).max(-1) // block)",
                "a_hi = p_hi.reshape(b, nb, block).max(-1) // block",
            ),
        ),
        (
            "tests/models/test_pallas_shared.py::test_block_ranges_cover_every_visible_key",
            "tests/models/test_pallas_shared.py::test_float32_forward_and_gradients_match_the_dense_softmax",
        ),
    ),
    Mutation(
        "shared_lm_first_token_unpredicted",
        "in the shared layout a causal LM's response keeps the prompt's last token, which predicts its first token",
        (
            (
                "rm_jax/data/prefix_sharing.py",
                "return max(0, min(common_prefix_len(seqs), min(int(s) for s in starts) - 1))",
                "return max(0, min(common_prefix_len(seqs), min(int(s) for s in starts)))",
            ),
        ),
        (
            "tests/data/test_prefix_sharing.py::test_causal_lm_targets_and_contexts_are_the_unshared_ones",
            "tests/data/test_pipeline.py::test_shared_steerlm2_batches_give_the_unshared_loss_and_gradients",
            "tests/policy/test_logprob.py::test_shared_prompts_give_each_response_its_unshared_logprob",
        ),
    ),
    Mutation(
        "shared_lm_first_token_from_previous",
        "a causal LM's response token in the shared layout is predicted from its own conversation's token before "
        "it (the first from the prompt's last), never from the row's previous token (a sibling's last token)",
        (
            (
                "rm_jax/data/prefix_sharing.py",
                "return max(0, min(common_prefix_len(seqs), min(int(s) for s in starts) - 1))",
                "return max(0, min(common_prefix_len(seqs), min(int(s) for s in starts)))",
            ),
            (
                "rm_jax/data/packing.py",
                "    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)\n",
                "    same = (seg[:, :-1] != 0) & (seg[:, 1:] > 0)\n    start = np.roll(start, -1, axis=1)\n",
            ),
        ),
        (
            "tests/data/test_prefix_sharing.py::test_causal_lm_targets_and_contexts_are_the_unshared_ones",
            "tests/data/test_pipeline.py::test_shared_steerlm2_batches_give_the_unshared_loss_and_gradients",
            "tests/policy/test_logprob.py::test_shared_prompts_give_each_response_its_unshared_logprob",
        ),
    ),
    Mutation(
        "shared_lm_reads_sibling",
        "a causal LM's response in the shared layout sees its prompt and itself, never an earlier sibling",
        (
            (
                "rm_jax/models/attention.py",
                "allowed = (qi >= ki) & ((qs == ks) | ((qg > 0) & (ks == -qg)))",
                "allowed = (qi >= ki) & ((qs == ks) | ((qg > 0) & ((ks == -qg) | ((ks > 0) & (ks < qs)))))",
            ),
        ),
        (
            "tests/data/test_prefix_sharing.py::test_causal_lm_targets_and_contexts_are_the_unshared_ones",
            "tests/data/test_pipeline.py::test_shared_steerlm2_batches_give_the_unshared_loss_and_gradients",
            "tests/policy/test_logprob.py::test_shared_prompts_give_each_response_its_unshared_logprob",
        ),
    ),
    Mutation(
        "serve_prompt_key_ignores_system",
        "serve (and score) group rows by the whole conversation before the last message, system messages included",
        (
            (
                "rm_jax/engine/scoring.py",
                "return json.dumps(list(messages[:-1]), sort_keys=True)",
                'return json.dumps([m for m in messages[:-1] if m["role"] != "system"], sort_keys=True)',
            ),
        ),
        ("tests/serving/test_service.py::test_serve_share_prompts_scores_n_samples_of_one_prompt_as_unshared",),
    ),
    Mutation(
        "serve_share_flag_dropped",
        "rm-jax serve's --share-prompts reaches the batcher",
        (("rm_jax/serving/service.py", "            share=self.share,\n", ""),),
        ("tests/serving/test_service.py::test_serve_share_prompts_scores_n_samples_of_one_prompt_as_unshared",),
    ),
    Mutation(
        "serve_share_budget_unshared",
        "a shared serve batch is admitted by its shared-layout tokens under --max-batch-tokens",
        (
            (
                "rm_jax/serving/batcher.py",
                "after = tally.cost(x, job.key(i)) if tally is not None else tokens + len(x)",
                "after = tokens + len(x)",
            ),
        ),
        ("tests/serving/test_batcher.py::test_samples_of_one_prompt_share_it_across_requests_within_the_bucket",),
    ),
    Mutation(
        "yardstick_share_flag_dropped",
        "the yardsticks (HelpSteer3, RM-Bench, JudgeBench) score with the share_prompts they are given",
        (("rm_jax/evaluation/yardsticks.py", '    opts["share_prompts"] = share_prompts\n', ""),),
        ("tests/evaluation/test_yardsticks.py::test_share_prompts_scores_every_response_as_unshared",),
    ),
    Mutation(
        "pallas_tpu_sees_sibling",
        "the TPU shared-prompt kernel never lets a response attend to a sibling response",
        (
            (
                "rm_jax/models/pallas_shared_tpu.py",
                "ok = (qi >= ki) & ((qs == ks) | ((qg > 0) & (ks == -qg)))",
                "ok = (qi >= ki) & ((qs == ks) | ((qg > 0) & ((ks == -qg) | (ks >= qg))))",
            ),
        ),
        ("tests/models/test_pallas_shared_tpu.py::test_float32_forward_and_gradients_match_the_dense_softmax",),
    ),
    Mutation(
        "pallas_tpu_fwd_skips_prompt_block",
        "the TPU kernel's forward / dq grid steps read the prompt's key blocks (scalar-prefetch index map)",
        (
            (
                "rm_jax/models/pallas_shared_tpu.py",
                "return jnp.where(j < n_a, a_lo + j, jnp.minimum(c_lo + j - n_a, i))",
                "return jnp.where(j < n_a, a_lo + j + 1, jnp.minimum(c_lo + j - n_a, i))",
            ),
        ),
        (
            "tests/models/test_pallas_shared_tpu.py::test_grid_steps_read_every_visible_block_and_skip_siblings",
            "tests/models/test_pallas_shared_tpu.py::test_float32_forward_and_gradients_match_the_dense_softmax",
        ),
    ),
    Mutation(
        "pallas_tpu_dkv_skips_prompt_block",
        "the TPU kernel's dk/dv steps take every query block that reads a prompt's key block, not only its own",
        (
            (
                "rm_jax/models/pallas_shared_tpu.py",
                "reads = ((a_lo <= j) & (j < a_lo + n_a)) | (c_lo <= j)",
                "reads = c_lo <= j",
            ),
        ),
        (
            "tests/models/test_pallas_shared_tpu.py::test_grid_steps_read_every_visible_block_and_skip_siblings",
            "tests/models/test_pallas_shared_tpu.py::test_float32_forward_and_gradients_match_the_dense_softmax",
        ),
    ),
    Mutation(
        "shared_ranges_overlap",
        "the xla kernel's prompt range and own range are disjoint in a shared row: no key counted twice",
        (
            (
                "rm_jax/models/attention.py",
                "allowed = (qg > 0) & (ks == -qg) & (ki < own0)  # prompt keys precede",
                "allowed = (qg > 0) & (ks == -qg)  # prompt keys precede",
            ),
        ),
        (
            "tests/models/test_attention.py::test_flash_on_shared_rows_of_several_groups[None-5-1-True]",
            "tests/models/test_attention.py::test_flash_matches_dense_softmax_and_its_gradients[shared-None-8]",
        ),
    ),
    Mutation(
        "single_range_skips_prompt",
        "with one key range per block (shared_prompts false) a shared row's response blocks start at their prompt",
        (
            (
                "rm_jax/models/attention.py",
                "        first = jnp.where(group > 0, prompt_first, first)",
                "        first = jnp.where(group > 0, first, first)",
            ),
        ),
        ("tests/models/test_attention.py::test_flash_on_shared_rows_of_several_groups",),
    ),
)


def tracked_files(root: str) -> list[str]:
    """What git would commit: tracked files and untracked ones it does not ignore (no venv, no caches)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({p for p in out.split("\0") if p and os.path.isfile(os.path.join(root, p))})


def copy_tree(root: str, dest: str) -> None:
    for rel in tracked_files(root):
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), target)


def stale_edits(root: str, m: Mutation) -> list[str]:
    """Edits whose snippet is not in the source exactly once."""
    bad = []
    for path, old, _ in m.edits:
        try:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                n = f.read().count(old)
        except FileNotFoundError:
            n = -1
        if n != 1:
            bad.append(f"{path}: snippet {'file missing' if n < 0 else f'found {n} times'}: {old.strip()[:70]!r}")
    return bad


def apply(dest: str, m: Mutation) -> None:
    for path, old, new in m.edits:
        p = os.path.join(dest, path)
        with open(p, encoding="utf-8") as f:
            text = f.read()
        with open(p, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new, 1))


def run_tests(dest: str, tests: tuple[str, ...], timeout: float) -> tuple[int, float, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = dest  # the copy, not the editable install
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, time.time() - t0, p.stdout[-3000:] + p.stderr[-2000:]
    except subprocess.TimeoutExpired:
        return -1, time.time() - t0, f"timed out after {timeout:.0f} s"


def check(m: Optional[Mutation], tests: tuple[str, ...], timeout: float, keep: bool) -> dict:
    """Copy the tree, plant ``m`` (None: the baseline), run ``tests``."""
    dest = tempfile.mkdtemp(prefix=f"mutation_{m.name if m else 'baseline'}_")
    try:
        copy_tree(ROOT, dest)
        if m is not None:
            apply(dest, m)
        rc, secs, tail = run_tests(dest, tests, timeout)
    finally:
        if not keep:
            shutil.rmtree(dest, ignore_errors=True)
    # pytest: 0 all passed, 1 some failed; 2-5 interrupted / internal error / usage / nothing collected.
    if m is None:
        verdict = "passed" if rc == 0 else "FAILED"
    else:
        verdict = {0: "SURVIVED", 1: "killed"}.get(rc, "ERROR")
    return {"name": m.name if m else "baseline", "verdict": verdict, "rc": rc, "seconds": secs, "tail": tail}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    ap.add_argument("--only", action="append", default=[], help="run this mutation (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="mutations checked at once (each in its own copy)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per mutation's tests")
    ap.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unmutated copy")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies (for debugging)")
    ap.add_argument("--log-dir", default=None, help="write each run's pytest output to DIR/NAME.log")
    a = ap.parse_args(argv)

    names = {m.name for m in MUTATIONS}
    unknown = [n for n in a.only if n not in names]
    if unknown:
        ap.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [m for m in MUTATIONS if not a.only or m.name in a.only]
    if a.list:
        for m in chosen:
            print(f"{m.name:28} {m.guarantee}")
            for path, _, _ in m.edits:
                print(f"{'':28}   plants in {path}")
            for t in m.tests:
                print(f"{'':28}   runs {t}")
        return 0

    stale = {m.name: stale_edits(ROOT, m) for m in chosen}
    stale = {k: v for k, v in stale.items() if v}
    for name, problems in stale.items():
        for p in problems:
            print(f"STALE {name}: {p}", file=sys.stderr)
    runnable = [m for m in chosen if m.name not in stale]

    t0 = time.time()
    results = []
    if not a.no_baseline:
        tests = tuple(dict.fromkeys(t for m in runnable for t in m.tests))
        base = check(None, tests, a.timeout * 2, a.keep)
        print(f"baseline (no mutation, {len(tests)} test targets): {base['verdict']} in {base['seconds']:.0f} s")
        if base["verdict"] != "passed":
            print(base["tail"], file=sys.stderr)
            return 1
    with concurrent.futures.ThreadPoolExecutor(max(1, a.jobs)) as pool:
        futures = {pool.submit(check, m, m.tests, a.timeout, a.keep): m for m in runnable}
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results.append(r)
            if a.log_dir:
                os.makedirs(a.log_dir, exist_ok=True)
                with open(os.path.join(a.log_dir, f"{r['name']}.log"), "w", encoding="utf-8") as f:
                    f.write(r["tail"])
            print(f"{r['name']:28} {r['verdict']:9} {r['seconds']:6.0f} s", flush=True)
            if r["verdict"] != "killed":
                print(r["tail"], file=sys.stderr)

    order = {m.name: i for i, m in enumerate(MUTATIONS)}
    results.sort(key=lambda r: order[r["name"]])
    print("\n| mutation | guarantee | tests | result | s |\n|---|---|---|---|---|")
    by = {m.name: m for m in MUTATIONS}
    for r in results:
        m = by[r["name"]]
        tests = ", ".join(t.split("/")[-1] for t in m.tests)
        print(f"| {m.name} | {m.guarantee} | {tests} | {r['verdict']} | {r['seconds']:.0f} |")
    for name in stale:
        print(f"| {name} | {by[name].guarantee} | | STALE | |")
    survived = [r["name"] for r in results if r["verdict"] == "SURVIVED"]
    errors = [r["name"] for r in results if r["verdict"] == "ERROR"]
    killed = sum(r["verdict"] == "killed" for r in results)
    print(
        f"\n{killed} of {len(chosen)} mutations killed; {len(survived)} survived"
        + (f" ({', '.join(survived)})" if survived else "")
        + (f"; {len(errors)} errors ({', '.join(errors)})" if errors else "")
        + (f"; {len(stale)} stale ({', '.join(stale)})" if stale else "")
        + f"; {time.time() - t0:.0f} s"
    )
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
