"""Run the service: load the model, bind, compile in the background, drain on SIGTERM, exit 0.

uvicorn's graceful shutdown does the draining: on SIGTERM (or SIGINT) it stops accepting connections,
closes idle keep-alive ones, waits up to ``drain_timeout_s`` for requests in flight to be answered,
then runs the app's shutdown (the batcher thread finishes and stops). Afterwards uvicorn re-raises the
signal it caught; a no-op SIGTERM handler installed around it turns a drained SIGTERM into exit 0.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING, Any, Optional

from rm_jax.core.errors import RmJaxError
from rm_jax.serving.settings import ServeConfig

if TYPE_CHECKING:
    from rm_jax.serving.service import RewardService

log = logging.getLogger("rm_jax.serve")


class ServeError(RmJaxError):
    """The server could not start or its model could not be compiled."""


def _log_to_stderr(level: str) -> None:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[rm_jax.serve] %(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level.upper())


def load_service(model_path: str, cfg: ServeConfig) -> RewardService:
    """The service :func:`serve` runs for ``model_path``: an HF folder, a run folder (a LoRA run's adapters
    applied unmerged on its base) or a PEFT adapter folder, read as ``rm-jax score`` reads it."""
    from rm_jax.runs.read import load_scoring_model
    from rm_jax.serving.service import RewardService

    log.info("loading %s", model_path)
    model = load_scoring_model(model_path, dtype=cfg.dtype, template=cfg.template)
    service = RewardService(model, cfg, model_path)
    log.info("seq_len %d; batch shapes %s", service.seq_len, ", ".join(b.name() for b in service.buckets))
    if service.gate is not None:
        log.info(
            "weights: prompt gate %s (per-row weights on /score; /get_reward needs the request's own weights)",
            cfg.weights,
        )
    if service.zero_unnamed:  # a W.json naming a subset of the attributes: the rest weigh 0
        log.info("weights %s do not name %s: weight 0", cfg.weights, ", ".join(service.zero_unnamed))
    return service


def serve(model_path: str, cfg: ServeConfig) -> int:
    """Serve ``model_path`` (see :func:`load_service`) until SIGTERM / SIGINT; 0 after a clean drain."""
    import uvicorn

    from rm_jax.serving.app import create_app

    cfg.check()
    _log_to_stderr(cfg.log_level)
    service = load_service(model_path, cfg)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            service.draining = True  # /health says so at once; uvicorn drains
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Optional[list] = None) -> None:
            await super().startup(sockets)
            for s in getattr(self, "servers", []):
                for sock in s.sockets:
                    host, port = sock.getsockname()[:2]
                    # One line a supervisor (or a test started with --port 0) can read the port from.
                    print(f"rm-jax serve: listening on http://{host}:{port}", file=sys.stderr, flush=True)

    config = uvicorn.Config(
        create_app(service),
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        access_log=cfg.access_log,
        timeout_graceful_shutdown=cfg.drain_timeout_s or None,
        lifespan="on",
    )
    server = Server(config)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if service.batcher.state.startswith("failed"):
        raise ServeError(f"{model_path}: {service.batcher.state}")
    log.info("stopped")
    return 0
