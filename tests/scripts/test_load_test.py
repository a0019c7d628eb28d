"""scripts/load_test.py --compare-old without a server: the "old" side really is rm-jax serve before issue 33's
scoring work (several rows a batch on a CPU, no compilation cache) and the workloads have the lengths they claim."""

from __future__ import annotations

import os
import sys

import numpy as np

from tests.helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))  # how the scripts themselves find bench_common

import load_test as lt  # noqa: E402


def test_old_configuration_is_the_pre_round_server_and_differs_from_the_default():
    from rm_jax.core.compile_cache import cache_dir
    from rm_jax.serving.buckets import ladder
    from rm_jax.serving.settings import ServeConfig

    assert lt.OLD_SERVER_ARGS[0] == "--max-batch-tokens"
    old = ServeConfig(max_batch_tokens=int(lt.OLD_SERVER_ARGS[1])).resolve_max_batch_tokens(4096, "cpu")
    new = ServeConfig().resolve_max_batch_tokens(4096, "cpu")
    assert (old, new) == (16384, 4096)
    assert ladder(4096, old)[-1].rows == 4 and ladder(4096, new)[-1].rows == 1  # 4 rows a pass before, 1 now
    assert cache_dir(lt.OLD_SERVER_ENV) is None  # compiles at every start
    assert cache_dir({"RM_JAX_COMPILATION_CACHE": "/tmp/x"}) == "/tmp/x"  # the new side's own cache


def test_compare_rows_short_long_and_mixed():
    from rm_jax.data.conversation import encode, row_to_messages
    from rm_jax.models.hf_io import load_tokenizer

    tok = load_tokenizer(os.path.join(ROOT, "rm_jax", "assets", "tokenizer"))
    rows, lengths, pools = lt.compare_rows(tok, None, 4096, 24, 4, seed=0)
    assert lengths == [len(x) for x in encode(tok, [row_to_messages(r) for r in rows], None)]
    short = np.array([lengths[i] for i in pools["short"]])
    long = [lengths[i] for i in pools["long"]]
    assert len(short) == 24 and len(long) == 4
    assert 250 < short.mean() < 1500  # HelpSteer2's ~2,200 characters a conversation, not the sample's ~210
    assert all(1024 <= n <= 4096 for n in long)
    mixed = set(pools["mixed"])
    assert len(mixed) == 16 and set(pools["long"]) <= mixed <= set(pools["short"] + pools["long"])  # 3 short: 1 long
    assert len({r["response"] for r in rows}) == len(rows)  # distinct rows: no answer can come from another's
