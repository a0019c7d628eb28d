"""Data: loading HelpSteer2 rows and preference pairs (``sources``) and describing them (``stats``)."""

from rm_jax.data.sources import DataError, LoadResult, load_chat, load_helpsteer, load_pairs, pair_ids

__all__ = ["DataError", "LoadResult", "load_chat", "load_helpsteer", "load_pairs", "pair_ids"]
