"""What ``rm-jax serve`` can be told, checked once before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, get_args

from rm_jax.core.attributes import check_weight_spec, is_gate_spec
from rm_jax.core.config import Dtype, SharePrompts
from rm_jax.core.errors import InputError
from rm_jax.serving.auth import check_exposure

ACCELERATOR_MAX_BATCH_TOKENS = 16384  # --max-batch-tokens' default on a GPU / TPU


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # loopback unless told otherwise; elsewhere only with a key or allow_unauthenticated
    port: int = 8000
    # default reward weights, matched by attribute name (a request may bring its own); a GATE_DIR: per-row
    # weights from the gate on each /score row's prompt (/get_reward then needs the request's own weights)
    weights: str = "70b-rewardbench"
    seq_len: Optional[int] = None  # longest conversation served; None: min(max_position_embeddings, 4096)
    # Token slots of the largest compiled batch; None: 16384 on an accelerator, on a CPU one row of seq_len and
    # at least rm_jax.engine.scoring.CPU_TOKENS_PER_PASS (bigger CPU batches score fewer tokens/s).
    max_batch_tokens: Optional[int] = None
    min_batch_tokens: int = 64  # token slots of the smallest one (the ladder halves down to it)
    max_segments: int = 32  # conversations packed into one row, at most
    max_wait_ms: float = 5.0  # longest a row waits for company before its batch runs
    max_queue: int = 2048  # rows admitted and not yet scored; beyond: 503 + Retry-After
    max_body_bytes: int = 16 * 2**20  # request body limit; beyond: 413
    drain_timeout_s: float = 60.0  # SIGTERM: how long in-flight requests may take to finish
    template: Optional[str] = None  # chat template override, as for rm-jax score
    # rows of a batch with one prompt (the conversation before the last message) share its tokens
    # (docs/sharing.md); auto: where the attention kernel reads the shared layout and it saves >= 10%
    share_prompts: SharePrompts = "auto"
    dtype: str = "float32"
    log_level: str = "info"
    access_log: bool = False  # one log line per request (costs CPU under load)
    api_key: Optional[str] = field(default=None, repr=False)  # set: every endpoint but /health needs Bearer KEY
    allow_unauthenticated: bool = False  # bind a non-loopback host without a key (a private network)

    def check(self) -> "ServeConfig":
        """Raise InputError naming the flag for a value that cannot work."""

        def positive(flag: str, value: float) -> None:
            if not value > 0:
                raise InputError(f"{flag}: must be positive, got {value}")

        if not 0 <= self.port <= 65535:
            raise InputError(f"--port: {self.port} is not a TCP port")
        if self.max_batch_tokens is not None:
            positive("--max-batch-tokens", self.max_batch_tokens)
        for flag, value in (
            ("--max-queue", self.max_queue),
            ("--max-body-bytes", self.max_body_bytes),
            ("--max-segments", self.max_segments),
            ("--min-batch-tokens", self.min_batch_tokens),
        ):
            positive(flag, value)
        if self.seq_len is not None:
            positive("--seq-len", self.seq_len)
        if self.max_wait_ms < 0:
            raise InputError(f"--max-wait-ms: must be >= 0, got {self.max_wait_ms}")
        if self.drain_timeout_s < 0:
            raise InputError(f"--drain-timeout: must be >= 0, got {self.drain_timeout_s}")
        if self.share_prompts not in ("auto", True, False):
            raise InputError(f"--share-prompts: must be auto, true or false, got {self.share_prompts!r}")
        if self.dtype not in get_args(Dtype):
            raise InputError(f"--dtype: {self.dtype!r}; choose {' or '.join(get_args(Dtype))}")
        if is_gate_spec(self.weights):  # a prompt gate: its folder read now, its attributes once the model loads
            from rm_jax.evaluation.gate import open_gate

            open_gate(self.weights)
        else:
            try:  # a typo fails before the model loads; matched to the model's attribute names once it has
                check_weight_spec(self.weights)
            except ValueError as e:
                raise InputError(f"--weights: {e}") from None
        check_exposure(self.host, self.api_key, self.allow_unauthenticated)
        return self

    def resolve_seq_len(self, max_position_embeddings: int) -> int:
        """The served limit: ``--seq-len`` or the model's context capped at 4096 (larger contexts compile
        huge batches; raise it explicitly). The largest batch must hold one row of that length."""
        seq_len = self.seq_len or min(max_position_embeddings, 4096)
        if self.max_batch_tokens is not None and seq_len > self.max_batch_tokens:
            raise InputError(
                f"--max-batch-tokens {self.max_batch_tokens} is less than --seq-len {seq_len}: "
                f"a conversation of the longest allowed length would not fit in any batch"
            )
        return seq_len

    def resolve_max_batch_tokens(self, seq_len: int, backend: Optional[str] = None) -> int:
        """``--max-batch-tokens``, or its default for ``backend`` (default: jax's): 16384 on an accelerator; on a
        CPU one row of ``seq_len``, at least ``CPU_TOKENS_PER_PASS`` slots (docs/performance.md)."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        import jax

        from rm_jax.engine.scoring import CPU_TOKENS_PER_PASS

        if (backend or jax.default_backend()) == "cpu":
            return max(seq_len, CPU_TOKENS_PER_PASS)
        return ACCELERATOR_MAX_BATCH_TOKENS
