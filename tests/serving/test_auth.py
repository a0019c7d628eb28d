"""The server's door without a server: which hosts need a key, how a Bearer header is read, and which
requests get in (the real server is tested in tests/integration/test_serve.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from rm_jax.core.errors import InputError
from rm_jax.serving import auth
from rm_jax.serving.auth import bearer_token, check_exposure, is_loopback, refusal
from rm_jax.serving.client import Client
from rm_jax.serving.settings import ServeConfig


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "my-box", ""])
def test_hosts_other_machines_can_reach(host):
    assert not is_loopback(host)


def test_an_exposed_host_needs_a_key_or_the_explicit_flag():
    with pytest.raises(InputError, match=r"--host 0\.0\.0\.0: .*--api-key .*RM_JAX_API_KEY.*--allow-unauthenticated"):
        ServeConfig(host="0.0.0.0").check()
    ServeConfig(host="0.0.0.0", api_key="s3cret").check()
    ServeConfig(host="0.0.0.0", allow_unauthenticated=True).check()
    ServeConfig(host="127.0.0.1").check()  # the default needs neither
    with pytest.raises(InputError, match="empty"):
        check_exposure("127.0.0.1", "  ", False)


def test_the_key_stays_out_of_the_config_repr():
    assert "s3cret" not in repr(ServeConfig(api_key="s3cret"))


def test_bearer_header_forms():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"  # the scheme is case-insensitive (RFC 6750)
    for bad in (None, "", "abc", "Basic YWJj", "Bearer", "Bearer   "):
        assert bearer_token(bad) is None, bad


def test_which_requests_get_in():
    key = "k-123"
    assert refusal("/score", None, None) is None  # no key configured: the door is open
    assert refusal("/health", None, key) is None  # probes need no secret
    assert refusal("/score", "Bearer k-123", key) is None
    for path in ("/score", "/get_reward", "/info", "/metrics", "/docs", "/nope"):
        assert refusal(path, None, key) == "missing", path
    assert refusal("/score", "Basic k-123", key) == "malformed"
    assert refusal("/score", "Bearer k-12", key) == "wrong"  # a prefix is not the key
    assert refusal("/score", "Bearer k-1234", key) == "wrong"
    assert refusal("/score", "Bearer K-123", key) == "wrong"


def test_the_comparison_is_constant_time(monkeypatch):
    seen, real = [], hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert refusal("/score", "Bearer nope", "key") == "wrong"
    # Fixed-length digests are compared, so neither the key's content nor its length shows in the timing.
    assert seen == [(hashlib.sha256(b"nope").digest(), hashlib.sha256(b"key").digest())]


def test_client_sends_the_key_only_when_given():
    assert Client("http://127.0.0.1:1", api_key="abc")._headers({"X": "1"}) == {"X": "1", "Authorization": "Bearer abc"}
    assert Client("http://127.0.0.1:1")._headers(None) == {}
    # A caller's own header wins (e.g. a test sending a wrong key on purpose).
    assert Client("http://127.0.0.1:1", api_key="abc")._headers({"authorization": "Bearer x"}) == {
        "authorization": "Bearer x"
    }
