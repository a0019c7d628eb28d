"""The HTTP layer: FastAPI routes over a :class:`RewardService`.

Request bodies are read by hand rather than through pydantic models: the size limit is enforced while
the body streams in (413 before a huge body is held in memory), and validation errors name the row and
field in one format across endpoints (:mod:`.protocol`). Every handler turns every exception into an
answer (4xx for the client's mistakes, 503 with Retry-After for back-pressure, 500 for a bug), so no
request can take the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from rm_jax.serving.auth import MESSAGES, refusal
from rm_jax.serving.batcher import NotReady, QueueFull
from rm_jax.serving.protocol import BadRequest
from rm_jax.serving.service import RewardService

log = logging.getLogger("rm_jax.serve")

# A body over the limit is still read (and dropped) up to this much more, so the client, which may still be
# sending, gets the 413 instead of a connection reset.
DRAIN_SLACK = 64 * 2**20

CLIENT_CLOSED = 499  # nginx's code for "the client went away"; only ever seen in metrics


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or BadRequest(413) once it passes ``limit`` bytes (declared or counted)."""
    declared = request.headers.get("content-length")
    try:
        size_declared = int(declared) if declared is not None else None
    except ValueError:
        raise BadRequest(f"header Content-Length: {declared!r} is not a number", field="Content-Length") from None
    over = size_declared is not None and size_declared > limit
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        over = over or size > limit
        if over:
            chunks.clear()
            if size > limit + DRAIN_SLACK:
                break
            continue
        chunks.append(chunk)
    if over:
        n = max(size, size_declared or 0)
        raise BadRequest(f"body: {n} bytes, more than the limit of {limit} bytes (--max-body-bytes)", status=413)
    return b"".join(chunks)


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read; only disconnect comes next)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def error(status: int, body: dict, retry_after: Optional[int] = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


async def handle(service: RewardService, request: Request, endpoint: str) -> Response:
    """One scoring request: read, prepare, queue, wait for its rows (or the client leaving), answer."""
    started = time.monotonic()
    m = service.metrics
    m.in_flight.inc()
    status, job = 500, None
    try:
        service.check_ready()
        with service.batcher.incoming():
            body = await read_body(request, service.cfg.max_body_bytes)
            prepared = await service.prepare(endpoint, body)
        loop = asyncio.get_running_loop()
        result: asyncio.Future = loop.create_future()

        def done(exc: Optional[BaseException]) -> None:  # batcher thread -> event loop
            loop.call_soon_threadsafe(_settle, result, exc)

        job = service.submit(prepared, done)
        if not result.done():
            gone = asyncio.ensure_future(wait_for_disconnect(request))
            try:
                await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not result.done():
                service.batcher.cancel(job)
                m.disconnects.inc()
                status = CLIENT_CLOSED
                return Response(status_code=status)
        result.result()  # the batch's exception, if it failed
        answer = service.answer(prepared, job)
        status = 200
        return JSONResponse(answer)
    except BadRequest as e:
        status = e.status
        return error(status, e.body())
    except ClientDisconnect:  # gone while its body was being read
        m.disconnects.inc()
        status = CLIENT_CLOSED
        return Response(status_code=status)
    except QueueFull as e:
        status = 503
        return error(status, {"error": f"busy: {e}", "row": None, "field": None}, e.retry_after)
    except NotReady as e:
        status = 503
        retry = None if e.state.startswith("failed") else e.retry_after
        return error(status, {"error": str(e), "row": None, "field": None}, retry)
    except asyncio.CancelledError:  # the server gave up waiting (drain timeout): drop the rows
        if job is not None:
            service.batcher.cancel(job)
        raise
    except Exception as e:
        log.exception("%s: internal error", endpoint)
        status = 500
        return error(status, {"error": f"internal error: {type(e).__name__}: {e}", "row": None, "field": None})
    finally:
        m.in_flight.dec()
        m.requests.labels(endpoint, str(status)).inc()
        m.latency.labels(endpoint).observe(time.monotonic() - started)


def _settle(fut: asyncio.Future, exc: Optional[BaseException]) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class RequireKey:
    """With --api-key, every path but /health (unknown ones, /docs and /openapi.json included) needs the
    key, checked before the body is read. Plain ASGI rather than ``@app.middleware``: Starlette's
    BaseHTTPMiddleware wraps ``receive``, which the disconnect watch in :func:`handle` reads directly."""

    def __init__(self, app, service: RewardService):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        key = self.service.cfg.api_key
        if key is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        why = refusal(scope["path"], header.decode("latin-1") if header is not None else None, key)
        if why is None:
            await self.app(scope, receive, send)
            return
        self.service.metrics.unauthorized.labels(why).inc()
        body = {"error": MESSAGES[why], "row": None, "field": "Authorization"}
        headers = {"WWW-Authenticate": 'Bearer realm="rm-jax serve"'}
        await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)


def create_app(service: RewardService) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()  # compiles on the batcher thread; the port answers /health meanwhile
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(title="rm-jax serve", summary="HelpSteer2-style multi-attribute reward model", lifespan=lifespan)

    app.add_middleware(RequireKey, service=service)

    @app.post("/score")
    async def score(request: Request) -> Response:
        """{"rows": [{"prompt", "response"} | {"messages"}], "weights"?} -> {"results": [...]} in row order."""
        return await handle(service, request, "score")

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Response:
        """OpenRLHF's remote RM: {"query": [templated text], "prompts"?, "labels"?} -> {"rewards": [...]}."""
        return await handle(service, request, "get_reward")

    @app.get("/health")
    async def health() -> Response:
        """200 {"status": "ready"} once every batch shape is compiled; else 503 with the state."""
        status, body = service.health()
        starting = body["status"] in ("starting", "compiling")
        return error(status, body, 1 if starting else None)

    @app.get("/info")
    async def info() -> Response:
        return JSONResponse(service.info())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return app
