"""The server's Prometheus metrics, in a registry of its own (several apps in one process never clash).

Counters and histograms are updated from the event loop and from the batcher thread; prometheus_client
locks each value, so both may write.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: half the text, nothing a dashboard reads
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "rm_serve_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "rm_serve_request_seconds",
            "Time from the request's arrival to its answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "rm_serve_rows",
            "Rows answered, by endpoint and outcome (scored | over_length)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "rm_serve_tokens", "Real tokens run through the model (a shared prompt counted once)", registry=r
        )
        self.prompt_tokens_saved = Counter(
            "rm_serve_prompt_tokens_saved",
            "Prompt tokens not run through the model because rows of a batch shared their prompt (--share-prompts)",
            registry=r,
        )
        self.shared_batches = Counter(
            "rm_serve_shared_batches", "Batches run in the shared-prompt layout (--share-prompts)", registry=r
        )
        self.batches = Counter(
            "rm_serve_batches", "Batches run, by compiled shape (rows x seq_len)", ["bucket"], registry=r
        )
        self.batch_rows = Histogram(
            "rm_serve_batch_conversations", "Conversations per batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_fill = Histogram(
            "rm_serve_batch_fill",
            "Share of a batch's token slots holding real tokens",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "rm_serve_batch_seconds",
            "Forward pass time per batch (device to host)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "rm_serve_queue_wait_seconds", "Time a row waits before its batch runs", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_failures = Counter("rm_serve_batch_failures", "Batches whose forward pass raised", registry=r)
        self.disconnects = Counter(
            "rm_serve_client_disconnects", "Requests whose client went away before the answer", registry=r
        )
        self.unauthorized = Counter(
            "rm_serve_unauthorized_requests",
            "Requests refused with 401 (--api-key), by reason (missing | malformed | wrong)",
            ["reason"],
            registry=r,
        )
        self.compilations = Counter(
            "rm_serve_xla_compilations",
            "XLA compilations in this process (all at start-up when shapes are fixed)",
            registry=r,
        )
        self.queue_rows = Gauge("rm_serve_queue_rows", "Rows admitted and not yet in a batch", registry=r)
        self.in_flight = Gauge(
            "rm_serve_in_flight_requests", "Requests being read, encoded, queued or scored", registry=r
        )
        self.ready = Gauge("rm_serve_ready", "1 once every batch shape is compiled", registry=r)

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_rows.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_listeners: list[Callable[[], None]] = []


def count_xla_compilations(on_compile: Callable[[], None]) -> None:
    """Call ``on_compile`` on every XLA backend compilation in this process (jax.monitoring events)."""
    import jax.monitoring

    if not _listeners:

        def listener(event: str, duration: float, **kwargs) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                for f in list(_listeners):
                    f()

        jax.monitoring.register_event_duration_secs_listener(listener)
    _listeners.append(on_compile)
