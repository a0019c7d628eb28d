"""`rm-jax serve`: the real server in a subprocess on a free loopback port (no mocks of the HTTP layer).

Two servers per module: `main` answers the correctness, ordering, bad-input and metrics tests; `held`
has a tiny queue and a long --max-wait-ms, so a half-sent request keeps its batcher waiting (the
batcher waits for requests still being read), which makes back-pressure, disconnects and the
SIGTERM drain deterministic to test.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.serving.client import Client, ServerProcess
from tests.helpers import make_hf_rm_with_tokenizer, worker_env

pytestmark = pytest.mark.slow
for _module in ("fastapi", "uvicorn", "prometheus_client"):  # the server's own dependencies (not on the GPU image)
    pytest.importorskip(_module, reason=f"rm-jax serve needs {_module}")

ROWS = [
    {"prompt": "What is 2 plus 2?", "response": "2 plus 2 equals 4."},
    {
        "prompt": "Hi\n<extra_id_1>Assistant\nHello! How can I help?\n<extra_id_1>User\nName a red fruit.",
        "response": "An apple is a red fruit.",
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello there"},
        ]
    },
    {"prompt": "Tell me a story. " * 12, "response": "Once upon a time " * 10},
]
# Distinct rows (distinct rewards), for checking that answers come back to the right row.
POOL = [
    {"prompt": f"Question {i}: what is {i} times {i + 3}?", "response": f"It is {i * (i + 3)}. " * (1 + i % 4)}
    for i in range(24)
]
SEQ_LEN = 256
MAX_BODY = 100_000
HELD_QUEUE = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("rm"))
    model, tok = make_hf_rm_with_tokenizer("qwen2", d)
    return d, model, tok


def _start(model_dir, tmp_path_factory, name, *args) -> ServerProcess:
    log = str(tmp_path_factory.mktemp("serve") / f"{name}.log")
    return ServerProcess(model_dir, ["--seq-len", str(SEQ_LEN), *args], log_path=log, env=worker_env())


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    """Both servers start at once (their compiles overlap); each test waits for the one it needs."""
    d = model_dir[0]
    main = _start(
        d,
        tmp_path_factory,
        "main",
        "--max-batch-tokens",
        "1024",
        "--min-batch-tokens",
        "128",
        "--max-wait-ms",
        "20",
        "--max-queue",
        "512",
        "--max-body-bytes",
        str(MAX_BODY),
    )
    held = _start(
        d,
        tmp_path_factory,
        "held",
        "--max-batch-tokens",
        "256",
        "--min-batch-tokens",
        "128",
        "--max-wait-ms",
        "20000",
        "--max-queue",
        str(HELD_QUEUE),
        "--drain-timeout",
        "60",
    )
    # Right after binding, `held` is still compiling (seconds, beside `main` on the same cores).
    c = Client(held.wait_listening(300))
    early = {"health": c.get("/health"), "score": c.post("/score", {"rows": ROWS[:1]})}
    yield {"main": main, "held": held, "early": early}
    for s in (main, held):
        if s.proc.poll() is None:
            s.terminate(30)


@pytest.fixture(scope="module")
def main(servers):
    s = servers["main"]
    s.wait_ready(300)
    return s


@pytest.fixture(scope="module")
def expected(model_dir, tmp_path_factory):
    """What `rm-jax score` writes for ROWS and POOL (in this process, its own compiled shapes)."""
    from rm_jax.cli import main as cli

    d = model_dir[0]
    tmp = tmp_path_factory.mktemp("score")
    rows = ROWS + POOL
    with open(tmp / "in.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert (
        cli(
            [
                "score",
                "--model",
                d,
                "--input",
                str(tmp / "in.jsonl"),
                "--output",
                str(tmp / "out.jsonl"),
                "--weights",
                "340b-rewardbench",
                "--no-progress",
            ]
        )
        == 0
    )
    out = [json.loads(x) for x in open(tmp / "out.jsonl")]
    return out[: len(ROWS)], out[len(ROWS) :]


def _metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _raw(url: str) -> socket.socket:
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    return s


def _http_request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline().decode().strip()
        if not line:
            break
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return status, headers, f.read(int(headers.get("content-length", 0)))


# ---------------------------------------------------------------- batch shapes (no server)


def test_bucket_ladder_and_fifo_packing():
    from rm_jax.serving.buckets import fitting_prefix, ladder, plan

    b = ladder(256, 1024, 64, 32)
    assert [(x.rows, x.seq_len, x.max_segments) for x in b] == [
        (1, 64, 8),
        (1, 128, 16),
        (1, 256, 32),
        (2, 256, 32),
        (4, 256, 32),
    ]
    assert plan([30], b)[0].seq_len == 64  # a lone short row runs at [1, 64]
    assert plan([200, 200, 200], b)[0].rows == 4  # three long rows need 3 of 4 rows
    chosen, bins = plan([100, 20, 100, 20, 10], b)
    assert sorted(i for row in bins for i in row) == [0, 1, 2, 3, 4] and chosen.tokens == 256
    # The next batch is a FIFO prefix that fits the largest bucket (4 x 256 tokens).
    assert fitting_prefix([250] * 6, b) == 4
    assert fitting_prefix([10] * 200, b) == 4 * 25  # 25 rows of 10 tokens fill a 256-token row
    assert fitting_prefix([5] * 200, b) == 4 * 32  # bounded by conversation slots too


def test_cli_errors_are_one_line(tmp_path, capsys):
    from rm_jax.cli import main as cli

    assert cli(["serve", "--model", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli(["serve", "--model", str(tmp_path), "--weights", "bogus"]) == 1
    assert "--weights: unknown reward-weight preset 'bogus'" in capsys.readouterr().err


def test_an_exposed_host_without_a_key_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    from rm_jax.cli import main as cli

    monkeypatch.delenv("RM_JAX_API_KEY", raising=False)
    nope = str(tmp_path / "nope")  # the refusal comes first: nothing is loaded for a server that won't start
    assert cli(["serve", "--model", nope, "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rm-jax serve: error: --host 0.0.0.0:" in err and "--allow-unauthenticated" in err
    # A key (flag or environment) or the explicit flag lets it through to loading the model.
    for args in (["--api-key", "k"], ["--allow-unauthenticated"]):
        assert cli(["serve", "--model", nope, "--host", "0.0.0.0", *args]) == 1
        assert "does not exist" in capsys.readouterr().err, args
    monkeypatch.setenv("RM_JAX_API_KEY", "k")
    assert cli(["serve", "--model", nope, "--host", "0.0.0.0"]) == 1
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- correctness


def test_score_equals_rm_jax_score_and_transformers(main, model_dir, expected):
    import torch
    from transformers import AutoTokenizer

    d, model, _ = model_dir
    results = Client(main.url).score(ROWS, weights="340b-rewardbench")
    assert len(results) == len(ROWS)
    tok = AutoTokenizer.from_pretrained(d)
    from rm_jax.data.conversation import row_to_messages

    for row, got, want in zip(ROWS, results, expected[0]):
        assert list(got["attributes"]) == list(ATTRIBUTES)
        np.testing.assert_allclose(list(got["attributes"].values()), list(want["attributes"].values()), atol=1e-5)
        assert got["reward"] == pytest.approx(want["reward"], abs=1e-5)
        ids = tok.apply_chat_template(row_to_messages(row), tokenize=True, return_dict=False)
        assert got["tokens"] == len(ids)
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(list(got["attributes"].values()), ref, atol=1e-4)
    # The server's default weights (70b-rewardbench) apply when the request names none.
    default = Client(main.url).score(ROWS[:1])[0]
    w = np.asarray(REWARD_PRESETS["70b-rewardbench"])
    assert default["reward"] == pytest.approx(float(np.asarray(list(default["attributes"].values())) @ w), abs=1e-6)


def test_get_reward_scores_templated_text_as_is(main, model_dir):
    """OpenRLHF sends the whole templated conversation: the same text gets /score's reward."""
    from rm_jax.data.conversation import render, row_to_messages

    _, _, tok = model_dir
    c = Client(main.url)
    texts = render(tok, [row_to_messages(r) for r in ROWS], None)
    reply = c.post("/get_reward", {"query": texts, "prompts": ["p"] * len(texts), "labels": [None] * len(texts)})
    assert reply.status == 200
    body = reply.json()
    want = [r["reward"] for r in c.score(ROWS)]
    np.testing.assert_allclose(body["rewards"], want, atol=1e-5)
    assert body["scores"] == body["rewards"] and "errors" not in body
    # Tokenized as is: no BOS/EOS added, special-token strings kept as their tokens.
    assert c.get_reward([texts[0] + tok.eos_token])[0] != pytest.approx(body["rewards"][0], abs=1e-6)
    assert c.post("/get_reward", {"query": []}).json() == {"rewards": [], "scores": []}


def test_row_order_under_concurrency_and_rows_packed_across_requests(main, expected):
    c0 = Client(main.url)
    before = c0.get("/metrics").body.decode()
    want = {json.dumps(r, sort_keys=True): e["reward"] for r, e in zip(POOL, expected[1])}
    rng = np.random.default_rng(0)
    plans = [
        [POOL[int(i)] for i in rng.choice(len(POOL), size=int(rng.integers(1, 9)), replace=False)] for _ in range(96)
    ]
    local = threading.local()

    def one(rows):
        if not hasattr(local, "c"):
            local.c = Client(main.url)
        return rows, local.c.score(rows, weights="340b-rewardbench")

    with ThreadPoolExecutor(12) as pool:
        done = list(pool.map(one, plans))
    for rows, results in done:
        assert len(results) == len(rows)
        for r, got in zip(rows, results):
            assert got["reward"] == pytest.approx(want[json.dumps(r, sort_keys=True)], abs=1e-5)
    after = c0.get("/metrics").body.decode()
    requests = _metric(after, "rm_serve_requests_total", endpoint="score", status="200") - _metric(
        before, "rm_serve_requests_total", endpoint="score", status="200"
    )
    batches = _metric(after, "rm_serve_batches_total") - _metric(before, "rm_serve_batches_total")
    assert requests == len(plans)
    assert 0 < batches < requests  # concurrent requests shared batches


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "body, status, row, field, words",
    [
        (b'{"rows": [{"prompt": "a", "response": ', 400, None, None, "invalid JSON"),
        (b"[1, 2]", 400, None, None, "expected a JSON object"),
        ({"row": []}, 400, None, "rows", "field 'rows' is required"),
        ({"rows": {"prompt": "a"}}, 400, None, "rows", "must be an array"),
        ({"rows": [ROWS[0], {"prompt": "a"}]}, 400, 1, "response", "rows[1].response: is required"),
        ({"rows": [ROWS[0], ROWS[1], {"prompt": 5, "response": "b"}]}, 400, 2, "prompt", "must be a string, got int"),
        (
            {"rows": [{"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "b"}]}]},
            400,
            0,
            "messages[0].content",
            "must be a string, got array",
        ),
        ({"rows": [{"messages": [{"role": "user", "content": "hi"}]}]}, 400, 0, "messages[0].role", "assistant"),
        ({"rows": ["just text"]}, 400, 0, None, "expected an object"),
        (
            {"rows": [ROWS[0]], "weights": "bogus-preset"},
            400,
            None,
            "weights",
            "unknown reward-weight preset 'bogus-preset'",
        ),
        ({"rows": [ROWS[0]], "weights": [1, 2, 3]}, 400, None, "weights", "expected 5"),
        ({"rows": [ROWS[0]] * 600}, 413, None, "rows", "more than the server's --max-queue"),
    ],
)
def test_bad_score_requests_name_row_and_field(main, body, status, row, field, words):
    c = Client(main.url)
    reply = c.post("/score", body)
    assert reply.status == status, reply.body
    err = reply.json()
    assert err["row"] == row and err["field"] == field and words in err["error"], err
    assert c.score(ROWS[:1])  # and the server goes on


@pytest.mark.parametrize(
    "body, row, field, words",
    [
        ({"prompts": ["a"]}, None, "query", "field 'query' is required"),
        ({"query": ["fine", 7]}, 1, "query", "query[1]: must be a string, got int"),
        ({"query": ["fine", ""]}, 1, "query", "query[1]: empty"),
        ({"query": ["fine"], "weights": "nope"}, None, "weights", "unknown reward-weight preset"),
    ],
)
def test_bad_get_reward_requests(main, body, row, field, words):
    reply = Client(main.url).post("/get_reward", body)
    assert reply.status == 400
    err = reply.json()
    assert err["row"] == row and err["field"] == field and words in err["error"], err


def test_oversize_body_is_413_and_the_server_goes_on(main):
    big = {"rows": [{"prompt": "x" * 1000, "response": "y"}] * (MAX_BODY // 1000 + 5)}
    c = Client(main.url)
    reply = c.post("/score", big)
    assert reply.status == 413
    assert "more than the limit of 100000 bytes" in reply.json()["error"]
    assert c.score(ROWS[:1])[0]["reward"] is not None


def test_over_long_conversation_is_reported_per_row(main, expected):
    """rm-jax score refuses a conversation over its limit naming the row; the server reports that row and
    answers the others."""
    long_row = {"prompt": "word " * 400, "response": "x"}
    results = Client(main.url).score([ROWS[0], long_row, ROWS[1]], weights="340b-rewardbench")
    assert results[0]["reward"] == pytest.approx(expected[0][0]["reward"], abs=1e-5)
    assert results[2]["reward"] == pytest.approx(expected[0][1]["reward"], abs=1e-5)
    bad = results[1]
    assert bad["reward"] is None and bad["attributes"] is None and bad["tokens"] > SEQ_LEN
    assert f"rows[1]: {bad['tokens']} tokens, more than the limit of {SEQ_LEN}" in bad["error"]
    body = Client(main.url).post("/get_reward", {"query": ["short text", "word " * 400]}).json()
    assert body["rewards"][0] is not None and body["rewards"][1] is None
    assert body["errors"][0]["index"] == 1 and "more than the limit" in body["errors"][0]["error"]


# ---------------------------------------------------------------- health, info, metrics, compilations


def test_info_health_metrics_and_no_recompiles(main):
    c = Client(main.url)
    assert c.get("/health").json() == {"status": "ready"}
    info = c.get("/info").json()
    assert info["attributes"] == list(ATTRIBUTES) and info["seq_len"] == SEQ_LEN
    assert info["weights"]["spec"] == "70b-rewardbench" and info["kernel"] == "xla" and info["auth"] == "none"
    shapes = [(b["rows"], b["seq_len"]) for b in info["buckets"]]
    assert shapes == [(1, 128), (1, 256), (2, 256), (4, 256)]
    m0 = c.get("/metrics")
    assert m0.headers["content-type"].startswith("text/plain")
    compiles = _metric(m0.body.decode(), "rm_serve_xla_compilations_total")
    assert compiles == len(shapes)  # one per shape, all at start-up
    # Every shape again, short and long rows: still no compilation.
    for rows in ([ROWS[0]], ROWS, POOL, POOL * 3):
        c.score(rows)
    text = c.get("/metrics").body.decode()
    assert _metric(text, "rm_serve_xla_compilations_total") == compiles
    for name in (
        "rm_serve_requests_total",
        "rm_serve_rows_total",
        "rm_serve_tokens_total",
        "rm_serve_batch_conversations_count",
        "rm_serve_request_seconds_count",
    ):
        assert _metric(text, name) > 0, name
    assert _metric(text, "rm_serve_queue_rows") == 0
    assert _metric(text, "rm_serve_ready") == 1
    assert _metric(text, "rm_serve_request_seconds_bucket", endpoint="score", le="+Inf") == _metric(
        text, "rm_serve_request_seconds_count", endpoint="score"
    )


# ---------------------------------------------------------------- the API key

KEY = "test-key-7f3a"


@pytest.fixture(scope="module")
def keyed(model_dir, tmp_path_factory):
    """A server given its key through the environment (one small batch shape: it compiles quickly)."""
    log = str(tmp_path_factory.mktemp("serve") / "keyed.log")
    args = ["--seq-len", "128", "--max-batch-tokens", "128", "--min-batch-tokens", "128"]
    s = ServerProcess(model_dir[0], args, log_path=log, env={**worker_env(), "RM_JAX_API_KEY": KEY})
    yield s
    if s.proc.poll() is None:
        s.terminate(30)


def test_api_key_guards_every_endpoint_but_health(keyed, expected):
    url = keyed.wait_ready(300)  # /health answers without a key
    anon, wrong, good = Client(url), Client(url, api_key=KEY + "x"), Client(url, api_key=KEY)
    assert anon.get("/health").json() == {"status": "ready"}
    refused = {"missing": 0, "malformed": 0, "wrong": 0}
    for path in ("/info", "/metrics", "/docs", "/nope"):
        r = anon.get(path)
        assert r.status == 401 and r.json()["field"] == "Authorization", (path, r.body)
        assert r.headers["www-authenticate"].startswith("Bearer")
        refused["missing"] += 1
    for path in ("/score", "/get_reward"):
        body = {"rows": ROWS[:1]} if path == "/score" else {"query": ["hi"]}
        assert anon.post(path, body).status == 401
        refused["missing"] += 1
        r = wrong.post(path, body)
        assert r.status == 401 and "does not match" in r.json()["error"]
        refused["wrong"] += 1
    r = anon.request("GET", "/info", headers={"Authorization": f"Basic {KEY}"})
    assert r.status == 401 and "Bearer" in r.json()["error"]
    refused["malformed"] += 1
    # The key lets the same requests in, and scores are those of `rm-jax score`.
    results = good.score(ROWS[:2], weights="340b-rewardbench")
    for got, want in zip(results, expected[0]):
        assert got["reward"] == pytest.approx(want["reward"], abs=1e-5)
    info = good.get("/info").json()
    assert info["seq_len"] == 128 and info["auth"] == "bearer" and KEY not in json.dumps(info)
    text = good.get("/metrics").body.decode()
    for reason, n in refused.items():
        assert _metric(text, "rm_serve_unauthorized_requests_total", reason=reason) == n, reason
    assert KEY not in keyed.log()  # the key is never logged


# ---------------------------------------------------------------- back-pressure, disconnects, drain


def test_health_before_ready_backpressure_disconnect_and_graceful_sigterm(servers, main):
    """On the `held` server: /health 503 while compiling; then a half-sent request B keeps the batcher
    waiting, so queued rows stay queued: a client that leaves drops its rows, a full queue answers 503
    with Retry-After, and SIGTERM waits for A and B to be answered before exiting 0."""
    s = servers["held"]
    health, early = servers["early"]["health"], servers["early"]["score"]
    assert health.status == 503 and health.json()["status"] in ("starting", "compiling")
    assert health.headers["retry-after"] == "1"
    assert early.status == 503 and early.headers["retry-after"] == "1"
    assert early.json()["error"] in ("the server is compiling", "the server is starting")
    url = s.wait_ready(300)
    c = Client(url)
    assert c.get("/health").json() == {"status": "ready"}

    small = [{"prompt": "a", "response": f"b{i}"} for i in range(HELD_QUEUE)]
    b_body = json.dumps({"rows": small[:2]}).encode()
    b = _raw(url)
    b.sendall(_http_request("/score", b_body)[:-5])  # B: all but the last 5 bytes of its body

    def queued() -> float:
        return _metric(c.get("/metrics").body.decode(), "rm_serve_queue_rows")

    def until(cond, what: str, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, what
            time.sleep(0.02)

    # D queues 3 rows and goes away: its rows leave the queue.
    d = _raw(url)
    d.sendall(_http_request("/score", json.dumps({"rows": small[:3]}).encode()))
    until(lambda: queued() == 3, "D's rows queued")
    d.close()
    until(lambda: queued() == 0, "D's rows dropped after it disconnected")
    until(lambda: _metric(c.get("/metrics").body.decode(), "rm_serve_client_disconnects_total") == 1, "counted")

    # A nearly fills the queue (held, since B is still being read), leaving room for B's 2 rows only;
    # C's 3 rows are refused with Retry-After.
    a_rows = small[: HELD_QUEUE - 2]
    a_result: dict = {}
    a_thread = threading.Thread(target=lambda: a_result.update(r=Client(url).post("/score", {"rows": a_rows})))
    a_thread.start()
    until(lambda: queued() == len(a_rows), "A's rows queued")
    busy = c.post("/score", {"rows": small[:3]})
    assert busy.status == 503 and int(busy.headers["retry-after"]) >= 1
    assert "busy" in busy.json()["error"]
    assert a_thread.is_alive()  # A is still waiting

    # SIGTERM: the listener closes, in-flight A and B are still answered, then exit 0.
    c.close()
    s.proc.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.5)
    assert s.proc.poll() is None  # draining, not gone
    b.sendall(_http_request("/score", b_body)[-5:])
    status, _, body = _read_response(b)
    assert status == 200 and len(json.loads(body)["results"]) == 2, body
    a_thread.join(60)
    assert a_result["r"].status == 200
    results = a_result["r"].json()["results"]
    assert len(results) == len(a_rows) and all(r["reward"] is not None for r in results)
    assert s.terminate(60) == 0, s.log()[-3000:]
    with pytest.raises(OSError):
        _raw(url)
    b.close()
