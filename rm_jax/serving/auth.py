"""The server's door: an optional API key (``Authorization: Bearer KEY``) and the rule that a server
reachable from other machines must have one unless told otherwise.

Kept free of FastAPI so the rules are unit-tested on their own (tests/serving/test_auth.py); the app
applies them to every request in one middleware."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Optional

from rm_jax.core.errors import InputError

ENV_API_KEY = "RM_JAX_API_KEY"

# Reachable without a key by design: a load balancer's or supervisor's probe carries no secret, and the
# answer (ready / compiling / draining) tells an outsider nothing about the model or its inputs.
OPEN_PATHS = frozenset({"/health"})

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True when a socket bound to ``host`` is reachable from this machine only. A name other than
    localhost could resolve to anything, so it counts as reachable from outside."""
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):  # [::1], as written in URLs
        h = h[1:-1]
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: Optional[str], allow_unauthenticated: bool) -> None:
    """Refuse to bind a non-loopback address without a key unless the operator said so explicitly."""
    if api_key is not None and not api_key.strip():
        raise InputError(f"--api-key / {ENV_API_KEY}: empty; give a secret or leave both unset")
    if api_key is None and not allow_unauthenticated and not is_loopback(host):
        raise InputError(
            f"--host {host}: other machines could reach this server and it has no key; give --api-key "
            f"(or {ENV_API_KEY}), bind a loopback address, or pass --allow-unauthenticated on a private network"
        )


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive, RFC 6750),
    or None when the header is missing or has another form."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def refusal(path: str, authorization: Optional[str], api_key: Optional[str]) -> Optional[str]:
    """Why a request must be answered 401 ("missing" | "malformed" | "wrong"), or None to let it in."""
    if api_key is None or path in OPEN_PATHS:
        return None
    if not authorization:
        return "missing"
    token = bearer_token(authorization)
    if token is None:
        return "malformed"
    # Constant time: a timing side channel must not reveal the key a prefix at a time. Digests first, so
    # the comparison's length is fixed and the key's length does not show either.
    if not hmac.compare_digest(_digest(token), _digest(api_key)):
        return "wrong"
    return None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


MESSAGES = {
    "missing": "unauthorized: this server needs an 'Authorization: Bearer <key>' header",
    "malformed": "unauthorized: the Authorization header must read 'Bearer <key>'",
    "wrong": "unauthorized: the key does not match",
}
