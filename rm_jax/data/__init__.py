"""data: rows to batches — HelpSteer2 prompts to chat messages to token ids (:mod:`.conversation`),
sources with schema checks and bad-row errors (:mod:`.sources`, RewardBench 2 sets in
:mod:`.rewardbench2_sets`), the over-length policy, nested subsets and the restorable loader
(:mod:`.pipeline`), packing (:mod:`.packing`), causal-LM examples (:mod:`.sft`), SteerLM 2.0 groups
(:mod:`.steer_groups`) and Table 2 statistics (:mod:`.stats`).

Imports: core.
"""

from rm_jax.data.sources import DataError, LoadResult, load_chat, load_helpsteer, load_pairs, pair_ids

__all__ = ["DataError", "LoadResult", "load_chat", "load_helpsteer", "load_pairs", "pair_ids"]
