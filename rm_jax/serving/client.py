"""A small standard-library client for ``rm-jax serve``, and a way to start one as a subprocess.

Used by the tests and scripts/load_test.py, and usable from an RL loop that would rather not depend on
``requests``::

    from rm_jax.serving.client import Client
    rm = Client("http://127.0.0.1:8000", api_key=os.environ.get("RM_JAX_API_KEY"))
    rewards = rm.get_reward(["<templated conversation text>", ...])
    results = rm.score([{"prompt": "...", "response": "..."}], weights="70b-card")
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence
from urllib.parse import urlparse


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ServerError(RuntimeError):
    def __init__(self, reply: Reply):
        super().__init__(f"HTTP {reply.status}: {reply.body[:500].decode('utf-8', 'replace')}")
        self.reply = reply


class Client:
    """One keep-alive connection; not for sharing between threads (make one per thread)."""

    def __init__(self, url: str, timeout: float = 120.0, api_key: Optional[str] = None):
        u = urlparse(url)
        self.host, self.port, self.timeout = u.hostname or "127.0.0.1", u.port or 80, timeout
        self.api_key = api_key  # sent as 'Authorization: Bearer KEY' on every request when given
        self._conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict[str, str]] = None
    ) -> Reply:
        # A keep-alive connection the server closed meanwhile: reconnect once (scoring is idempotent).
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=self._headers(headers))
                r = self._conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
                continue
            reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
            if r.will_close:
                self.close()
            return reply
        raise AssertionError("unreachable")

    def _headers(self, headers: Optional[dict[str, str]]) -> dict[str, str]:
        out = dict(headers or {})
        if self.api_key is not None and not any(k.lower() == "authorization" for k in out):
            out["Authorization"] = f"Bearer {self.api_key}"
        return out

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, obj: Any) -> Reply:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return self.request("POST", path, body, {"Content-Type": "application/json"})

    def score(self, rows: Sequence[dict], weights: Any = None) -> list[dict]:
        """``results`` of POST /score (raises ServerError unless 200)."""
        return self._call("/score", {"rows": list(rows)}, weights)["results"]

    def get_reward(self, queries: Sequence[str], weights: Any = None) -> list[Optional[float]]:
        """``rewards`` of POST /get_reward, OpenRLHF's body (raises ServerError unless 200)."""
        return self._call("/get_reward", {"query": list(queries)}, weights)["rewards"]

    def _call(self, path: str, body: dict[str, Any], weights: Any) -> dict:
        if weights is not None:
            body["weights"] = weights
        reply = self.post(path, body)
        if reply.status != 200:
            raise ServerError(reply)
        return reply.json()


# ---------------------------------------------------------------- a server in a subprocess

_LISTENING = re.compile(r"rm-jax serve: listening on (http://[^\s]+)")


class ServerProcess:
    """``rm-jax serve`` started with ``--port 0``; stderr goes to ``log_path``, where its URL is read."""

    def __init__(
        self,
        model: str,
        args: Sequence[str] = (),
        log_path: Optional[str] = None,
        env: Optional[dict] = None,
        python: str = sys.executable,
    ):
        self.log_path = log_path or os.path.join(tempfile.gettempdir(), f"rm-serve-{os.getpid()}-{time.time_ns()}.log")
        cmd = [python, "-m", "rm_jax.cli", "serve", "--model", model, "--port", "0", *args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url: Optional[str] = None

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_listening(self, timeout: float = 120.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = _LISTENING.search(self.log())
            if m:
                self.url = m.group(1)
                return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"rm-jax serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"rm-jax serve did not bind in {timeout} s:\n{self.log()[-3000:]}")

    def wait_ready(self, timeout: float = 300.0) -> str:
        url = self.url or self.wait_listening(timeout)
        c = Client(url, timeout=10)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if c.get("/health").status == 200:
                    return url
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"rm-jax serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"rm-jax serve not ready in {timeout} s:\n{self.log()[-3000:]}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (drain), then the exit code; SIGKILL if it outlives ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()
