"""The reward service without HTTP: a loaded model, its encoder, its batcher and the answers.

The app (:mod:`.app`) calls :meth:`RewardService.prepare` (parse, validate and tokenize on one worker
thread, off the event loop), :meth:`RewardService.submit` (queue the rows) and, once every row is
scored, :meth:`RewardService.answer` (attributes -> reward with the request's weights, in row order).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

import jax
import numpy as np

from rm_jax.core.attributes import (
    REWARD_PRESETS,
    is_gate_spec,
    resolve_reward_weights,
    unnamed_attributes,
    weights_source,
)
from rm_jax.core.errors import InputError
from rm_jax.engine.scoring import Scorer, prompt_key
from rm_jax.models.attention import SHARED_KERNELS
from rm_jax.runs.read import ScoringModel
from rm_jax.serving.batcher import Batcher, Job, NotReady
from rm_jax.serving.buckets import ladder
from rm_jax.serving.encoding import Encoded, Encoder
from rm_jax.serving.prometheus import ServeMetrics, count_xla_compilations
from rm_jax.serving.protocol import (
    BadRequest,
    parse_json,
    parse_reward_request,
    parse_score_request,
    reward_response,
    score_response,
)
from rm_jax.serving.settings import ServeConfig

ENDPOINTS = ("score", "get_reward")


@dataclass
class Prepared:
    endpoint: str
    encoded: Encoded
    weights: Optional[np.ndarray]  # None: the server's
    probs: bool = False  # /score asked for the level probabilities
    row_weights: Optional[np.ndarray] = None  # [rows, A]: the server's prompt gate on each row's prompt
    groups: Optional[list[str]] = None  # /score: each row's prompt key (rm-jax score's), for prompt sharing

    @property
    def ids(self) -> list[np.ndarray]:
        return [self.encoded.ids[i] for i in self.encoded.to_score]

    @property
    def row_groups(self) -> Optional[list[str]]:
        return None if self.groups is None else [self.groups[i] for i in self.encoded.to_score]


class RewardService:
    def __init__(self, model: ScoringModel, cfg: ServeConfig, model_path: str):
        self.model, self.cfg, self.model_path = model, cfg, os.path.abspath(model_path)
        # outputs: the attributes (plus a separate reward_head column); level probabilities: the attributes'
        n, m = model.cfg.num_labels, model.cfg.num_outputs
        self.gate: Any = None  # a prompt gate (weights fit --gate): per-row weights on /score
        self.weights: Optional[np.ndarray] = None
        self.zero_unnamed: list[str] = []
        if is_gate_spec(cfg.weights):
            from rm_jax.evaluation.gate import open_gate

            self.gate = open_gate(cfg.weights, model.attributes)
            if self.gate.hidden_size != model.cfg.hidden_size:
                raise InputError(
                    f"--weights {cfg.weights}: the gate reads {self.gate.hidden_size}-wide prompt embeddings; this "
                    f"model's are {model.cfg.hidden_size} wide (a gate works only with the RM it was fitted on)"
                )
        else:
            try:
                self.weights = resolve_reward_weights(cfg.weights, model.attributes)  # by attribute name
                self.zero_unnamed = unnamed_attributes(cfg.weights, model.attributes)
            except ValueError as e:
                raise InputError(f"--weights: {e}") from None
        self.seq_len = cfg.resolve_seq_len(model.cfg.max_position_embeddings)
        self.max_batch_tokens = cfg.resolve_max_batch_tokens(self.seq_len)
        self.buckets = ladder(self.seq_len, self.max_batch_tokens, cfg.min_batch_tokens, cfg.max_segments)
        self.encoder = Encoder(model.tokenizer, model.template, self.seq_len)
        self.metrics = ServeMetrics()
        count_xla_compilations(self.metrics.compilations.inc)
        scorer = Scorer(model.cfg, model.params, model.mesh, model.pad_id)  # the rm-jax score forward pass
        # The gate's prompt embeddings run on the encode thread, outside the batcher, through their own Scorer
        # (same parameters) so its compiled shapes (prompt lengths in steps of 64) are kept between requests.
        self._gate_scorer = Scorer(model.cfg, model.params, model.mesh, model.pad_id) if self.gate else None
        self.has_levels = scorer.has_levels
        # auto shares only where the configured kernel reads the shared layout (as rm-jax score): elsewhere a
        # shared batch would run the blockwise xla kernel instead of a faster one (docs/sharing.md)
        self.share = cfg.share_prompts
        if self.share == "auto" and model.cfg.attention_kernel() not in SHARED_KERNELS:
            self.share = False
        self.batcher = Batcher(
            (lambda batch, b, shared: _with_levels(*scorer.score_batch(batch, b.max_segments, True, shared)))
            if self.has_levels
            else (lambda batch, b, shared: scorer.score_batch(batch, b.max_segments, shared=shared)),
            self.buckets,
            # A distributional head's rows carry E[y] then the level probabilities, flattened: one forward pass
            m + n * model.cfg.label_levels if self.has_levels else m,
            model.pad_id,
            cfg.max_queue,
            cfg.max_wait_ms / 1000.0,
            self.metrics,
            share=self.share,
        )
        # One thread owns the tokenizer (HF fast tokenizers are not thread-safe) and keeps JSON parsing and
        # chat templating off the event loop.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rm-serve-encode")
        self.draining = False

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Compile every batch shape on the batcher thread; /health turns ready when done."""
        self.batcher.start()

    def close(self) -> None:
        self.batcher.close(timeout=self.cfg.drain_timeout_s or None)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def state(self) -> str:
        if self.draining and self.batcher.state == "ready":
            return "draining"
        return self.batcher.state

    def check_ready(self) -> None:
        """Before ready: 503. While draining a request still arrives only on a connection that was busy at
        SIGTERM (uvicorn closes the listener and idle connections): it is served."""
        if self.batcher.state != "ready":
            raise NotReady(self.batcher.state)

    # ------------------------------------------------------------ requests

    async def prepare(self, endpoint: str, body: bytes) -> Prepared:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._prepare, endpoint, body)

    def _prepare(self, endpoint: str, body: bytes) -> Prepared:
        obj = parse_json(body)
        names, limit = self.model.attributes, self.cfg.max_queue
        if endpoint == "score":
            req = parse_score_request(obj, names, limit, self.has_levels)
            enc = self.encoder.conversations(req.conversations, req.fields)
            row_w = None
            if req.weights is None and self.gate is not None:  # the request's own weights win over the gate
                row_w = self.gate_weights([c[:-1] for c in req.conversations])
            groups = [prompt_key(c) for c in req.conversations] if self.share is not False else None
            return Prepared(endpoint, enc, req.weights, req.probs, row_w, groups)
        rreq = parse_reward_request(obj, names, limit)
        if rreq.weights is None and self.gate is not None:
            raise BadRequest(GET_REWARD_GATE, field="weights")
        return Prepared(endpoint, self.encoder.texts(rreq.texts), rreq.weights)

    def gate_weights(self, prompts: list) -> np.ndarray:
        """[rows, A]: the gate's weights for each prompt conversation (the messages before the response),
        a prompt longer than the served limit read from its last ``seq_len`` tokens, as ``rm-jax score``."""
        from rm_jax.evaluation.gate import prompt_embeddings

        emb, _ = prompt_embeddings(self.model, prompts, self.seq_len, 16, 16, progress=False, scorer=self._gate_scorer)
        return self.gate.weights(emb, self.model.attributes)

    def submit(self, prepared: Prepared, done: Callable[[Optional[BaseException]], None]) -> Job:
        return self.batcher.submit(prepared.ids, done, prepared.row_groups)

    def answer(self, prepared: Prepared, job: Job) -> dict:
        enc, n, m = prepared.encoded, self.model.cfg.num_labels, self.model.cfg.num_outputs
        pred = np.zeros((len(enc.ids), m), np.float32)
        pred[enc.to_score] = job.out[:, :m]
        probs = None
        if prepared.probs:
            probs = np.zeros((len(enc.ids), n, self.model.cfg.label_levels), np.float32)
            probs[enc.to_score] = job.out[:, m:].reshape(len(enc.to_score), n, -1)
        if prepared.row_weights is not None:  # as rm_jax.engine.scoring.score_rows computes it
            reward = (pred.astype(np.float64) * prepared.row_weights).sum(-1)
        else:
            reward = pred.astype(np.float64) @ (self.weights if prepared.weights is None else prepared.weights)
        self.metrics.rows.labels(prepared.endpoint, "scored").inc(len(enc.to_score))
        if enc.errors:
            self.metrics.rows.labels(prepared.endpoint, "over_length").inc(len(enc.errors))
        if prepared.endpoint == "score":
            return score_response(
                self.model.attributes, pred, reward, enc.tokens, enc.errors, probs, prepared.row_weights
            )
        return reward_response(reward, enc.errors)

    # ------------------------------------------------------------ /health, /info

    def health(self) -> tuple[int, dict]:
        state = self.state
        return (200 if state == "ready" else 503), {"status": state}

    def info(self) -> dict[str, Any]:
        from rm_jax.models.attention import resolve_kernel

        mc = self.model.cfg
        try:
            kernel = resolve_kernel(mc.attention, dtype=mc.dtype)
        except TypeError:  # an older resolve_kernel without the dtype argument
            kernel = resolve_kernel(mc.attention)
        return {
            "model": self.model_path,
            "model_type": mc.model_type,
            "attributes": list(self.model.attributes),
            # the attribute head (docs/heads.md): what "attributes" mean and whether "probs" can be asked for
            "head": {
                "kind": mc.attribute_head,
                "label_levels": mc.label_levels,
                "probs": self.has_levels,
                "reward_head": mc.reward_head,
            },
            "weights": self._weights_info(),
            "weight_presets": sorted(REWARD_PRESETS),
            "seq_len": self.seq_len,
            "max_position_embeddings": mc.max_position_embeddings,
            "kernel": kernel,
            "dtype": mc.dtype,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in self.model.mesh.devices.flat],
            "template": self.model.template or "the tokenizer's chat template",
            "buckets": [{"rows": b.rows, "seq_len": b.seq_len, "max_segments": b.max_segments} for b in self.buckets],
            "max_batch_tokens": self.max_batch_tokens,
            # the --share-prompts setting and whether batches may share (auto: off where the kernel cannot)
            "share_prompts": {"setting": self.cfg.share_prompts, "on": self.share is not False},
            "max_wait_ms": self.cfg.max_wait_ms,
            "max_queue": self.cfg.max_queue,
            "max_body_bytes": self.cfg.max_body_bytes,
            "auth": "bearer" if self.cfg.api_key is not None else "none",  # never the key itself
            "state": self.state,
        }

    def _weights_info(self) -> dict[str, Any]:
        if self.gate is not None:
            from rm_jax.evaluation.weights import weights_record

            return {
                **weights_record(self.cfg.weights, self.model.attributes),
                "by_attribute": None,
                "endpoints": {"score": "per-row weights, returned in each result", "get_reward": GET_REWARD_GATE},
            }
        assert self.weights is not None
        return {
            "spec": self.cfg.weights,
            "source": weights_source(self.cfg.weights),
            "values": [float(x) for x in self.weights],  # in the order of "attributes"
            "by_attribute": {a: float(x) for a, x in zip(self.model.attributes, self.weights)},
            **({"zero_unnamed": self.zero_unnamed} if self.zero_unnamed else {}),
        }


GET_REWARD_GATE = (
    "get_reward: the server's --weights is a prompt gate (weights per prompt), and an OpenRLHF query is one "
    'templated text from which the prompt cannot be separated; send "weights" (a preset or numbers) with the '
    "request, or use /score with {prompt, response} rows"
)


def _with_levels(attrs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """[rows, S, A] attributes and [rows, S, A, K] probabilities as one [rows, S, A * (1 + K)] array."""
    return np.concatenate([attrs, probs.reshape(*probs.shape[:-2], -1)], axis=-1)
