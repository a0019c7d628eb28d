"""``rm-jax serve``: an HTTP reward service (``/score``, OpenRLHF's ``/get_reward``, ``/health``,
``/info``, ``/metrics``) with dynamic packed batching; see docs/serving.md."""

from __future__ import annotations

import argparse
import os
from typing import Sequence, get_args

from rm_jax.core.config import Dtype


def main(argv: Sequence[str]) -> int:
    from rm_jax.serving.settings import ServeConfig

    d = ServeConfig()
    ap = argparse.ArgumentParser(prog="rm-jax serve", description=__doc__)
    ap.add_argument("--model", required=True, help="HF *ForSequenceClassification folder or rm_jax run folder")
    ap.add_argument(
        "--host",
        default=d.host,
        help="bind address (default loopback); any other needs --api-key or --allow-unauthenticated",
    )
    ap.add_argument(
        "--api-key",
        default=None,
        help="every endpoint but /health then needs 'Authorization: Bearer KEY' (default: env RM_JAX_API_KEY; "
        "the environment keeps the key out of `ps`)",
    )
    ap.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="bind a non-loopback --host without a key (a private network, or behind an authenticating proxy)",
    )
    ap.add_argument("--port", type=int, default=d.port, help="0: any free port (printed on stderr)")
    ap.add_argument(
        "--weights",
        default=d.weights,
        help="default reward weights, matched by attribute name: a preset, a W.json (weights fit), w1,...,wn "
        "in the model's attribute order, or a GATE_DIR (weights fit --gate: per-row weights on /score, "
        "returned in each result; /get_reward then needs the request's own weights)",
    )
    ap.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="longest conversation served (default: the model's context, at most 4096)",
    )
    ap.add_argument(
        "--max-batch-tokens",
        type=int,
        default=d.max_batch_tokens,
        help="token slots of the largest batch (default 16384 on a GPU / TPU; on a CPU one row of --seq-len, "
        "at least 2048: bigger CPU batches score fewer tokens/s)",
    )
    ap.add_argument(
        "--min-batch-tokens", type=int, default=d.min_batch_tokens, help="token slots of the smallest batch"
    )
    ap.add_argument("--max-segments", type=int, default=d.max_segments, help="conversations packed per row, at most")
    ap.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="longest batching delay for a row")
    ap.add_argument("--max-queue", type=int, default=d.max_queue, help="rows waiting, at most; beyond: 503")
    ap.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="request body limit; beyond: 413")
    ap.add_argument(
        "--drain-timeout", type=float, default=d.drain_timeout_s, help="seconds SIGTERM waits for requests in flight"
    )
    ap.add_argument("--template", default=None, help="chat template: the tokenizer's own (default) or 'nemotron'")
    ap.add_argument("--dtype", default=d.dtype, choices=get_args(Dtype))
    ap.add_argument(
        "--share-prompts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rows of a batch with the same prompt (the conversation before the last message) encode it once "
        "(exact; default: on where that saves >= 10%% of a batch's tokens and the attention kernel reads the "
        "shared layout, docs/sharing.md)",
    )
    ap.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"])
    ap.add_argument("--access-log", action="store_true", help="log every request")
    a = ap.parse_args(list(argv))
    from rm_jax.cli.score import check_weights
    from rm_jax.serving.auth import ENV_API_KEY
    from rm_jax.serving.server import serve

    check_weights(a.weights, None)  # a typo fails before the model loads
    api_key = a.api_key if a.api_key is not None else os.environ.get(ENV_API_KEY)
    cfg = ServeConfig(
        host=a.host,
        port=a.port,
        weights=a.weights,
        seq_len=a.seq_len,
        max_batch_tokens=a.max_batch_tokens,
        min_batch_tokens=a.min_batch_tokens,
        max_segments=a.max_segments,
        max_wait_ms=a.max_wait_ms,
        max_queue=a.max_queue,
        max_body_bytes=a.max_body_bytes,
        drain_timeout_s=a.drain_timeout,
        template=a.template,
        dtype=a.dtype,
        share_prompts="auto" if a.share_prompts is None else a.share_prompts,
        log_level=a.log_level,
        access_log=a.access_log,
        api_key=api_key,
        allow_unauthenticated=a.allow_unauthenticated,
    )
    cfg.check()  # an exposed server without a key is refused before the model loads
    return serve(a.model, cfg)
