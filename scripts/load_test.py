"""Load test for ``rm-jax serve``: concurrent clients against one-row-at-a-time requests, on loopback only.

Starts the server itself (``--model DIR``, or ``--synthetic`` for a random model, e.g. on a GPU machine
with no trained run) or uses a running one (``--url``, loopback only). Bounded: at most ``--requests``
concurrent-phase requests and ``--seconds`` of wall time; it always stops by itself. With
``RM_JAX_API_KEY`` set, every client sends it (and a server it starts reads the same variable).

What it does, interleaved in ``--rounds`` rounds so a noisy shared machine affects both sides alike:
  sequential  one client, one row per request (what an RL loop without batching would do);
  concurrent  ``--clients`` threads, mixed request sizes (1..--max-rows rows, HelpSteer2 sample rows cut
              to mixed lengths), 25% of them OpenRLHF ``/get_reward`` with the rows' templated text, and
              ``--bad-share`` malformed ones (invalid JSON, missing field, non-string text, unknown preset,
              empty query, oversize body), each of which must get its own 4xx.
Every good row's reward is checked against ``rm-jax score``'s numbers, computed in this process before
the load (rm_jax.engine.scoring.score_rows on the same model); a row over the server's --seq-len must come back
as a per-row error, like ``rm-jax score`` refuses it. 503s are retried after Retry-After and counted.

Reports rows/s for both phases and their ratio, p50/p99 latency, status counts, lost and wrong answers.
Exit 0 when nothing was lost or wrong (and the ratio >= --min-speedup, if given).

``--compare-old`` measures this round's serving speed-ups instead (issue 33): two servers on the same model, one
as ``rm-jax serve`` was before them (``--max-batch-tokens 16384``: up to 4 rows of 4,096 a pass on a CPU;
``RM_JAX_COMPILATION_CACHE=off``) and one with the new defaults (one row a pass on a CPU, the persistent compilation
cache in a fresh folder), the same requests to both (short HelpSteer2-shaped rows, long 1,024-4,096-token rows,
and a 3:1 mix; 1..--max-rows rows each from --clients threads), phases alternated; requests/s, rows/s, p50/p95
latency, their ratios, each server's start-up to ready (and the new one's second start, on its filled cache),
and transformers scoring the same conversations one at a time (scripts/bench_score.py's batch-1 loops). Every
reward is checked against ``rm-jax score``'s as above.

    python scripts/load_test.py --model /tmp/serve_demo_run                 # the full run (>= 2,000 requests)
    python scripts/load_test.py --synthetic tiny --quick --json             # short, self-contained, JSON out
    python scripts/load_test.py --synthetic small --compare-old --json      # old vs new serving configuration
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# This process and the server it starts share the accelerator: neither may grab most of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from bench_common import cpu_name, sample_helpsteer_chars  # noqa: E402

SAMPLE = os.path.join(REPO, "rm_jax", "assets", "sample", "validation.jsonl.gz")
BAD_KINDS = ("invalid_json", "missing_field", "non_string", "unknown_preset", "empty_query", "oversize")


def make_rows(n: int, seed: int) -> list[dict]:
    """HelpSteer2 sample rows with prompt and response cut to mixed lengths (short to over the limit)."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        src = [json.loads(line) for line in f]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        r = src[i % len(src)]
        frac = rng.choice([0.1, 0.25, 0.5, 1.0, 1.0])
        p, q = r["prompt"], r["response"]
        rows.append({"prompt": p[: max(8, int(len(p) * frac))], "response": q[: max(4, int(len(q) * frac))] + f" #{i}"})
    return rows


def synthetic_model(kind: str, out_dir: str) -> str:
    """A random reward model as an HF folder with the bundled tokenizer (no training, no downloads)."""
    import jax

    from rm_jax.core.attributes import ATTRIBUTES
    from rm_jax.models import init_params
    from rm_jax.models.hf_io import export_hf, load_tokenizer
    from rm_jax.models.llama import DecoderConfig
    from rm_jax.models.sharding import make_mesh

    tok = load_tokenizer(os.path.join(REPO, "rm_jax", "assets", "tokenizer"))
    arch = {
        "tiny": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
        ),
        # The issue-33 RM shape (a mid-sized random Llama RM) with a 4k context: --compare-old's long rows.
        "small": dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=32,
            max_position_embeddings=4096,
        ),
        # Llama-3.2-1B's body (vocab: the bundled tokenizer's).
        "1b": dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            rope_theta=500000.0,
            max_position_embeddings=4096,
        ),
    }[kind]
    cfg = DecoderConfig(model_type="llama", vocab_size=len(tok), num_labels=len(ATTRIBUTES), **arch)
    params = init_params(cfg, make_mesh(devices=jax.devices()[:1]), seed=0)
    return export_hf(cfg, params, out_dir, list(ATTRIBUTES), tok)


def expected_rewards(
    model_dir: str, rows: list[dict], weights: str, seq_len: int, dtype: str = "float32", loaded: Any = None
) -> tuple[list[Optional[float]], list[str]]:
    """rm-jax score's reward for every row (None where the row is over ``seq_len``) and each row's
    templated text (the OpenRLHF query for it). ``loaded``: the ScoringModel of ``model_dir``, if read already."""
    from rm_jax.data.conversation import encode, render, row_to_messages
    from rm_jax.engine.scoring import score_rows
    from rm_jax.runs.read import load_scoring_model

    model = loaded or load_scoring_model(model_dir, dtype=dtype)
    msgs = [row_to_messages(r) for r in rows]
    lengths = [len(x) for x in encode(model.tokenizer, msgs, model.template)]
    ok = [i for i, n in enumerate(lengths) if n <= seq_len]
    _, reward = score_rows(model, [rows[i] for i in ok], weights, seq_len=seq_len, progress=False)
    out: list[Optional[float]] = [None] * len(rows)
    for i, r in zip(ok, reward):
        out[i] = float(r)
    return out, render(model.tokenizer, msgs, model.template)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: Counter = Counter()
        self.latency: list[float] = []  # good requests only
        self.rows = 0  # good rows answered
        self.lost = 0  # good rows missing from an answer, or good requests not answered 200
        self.wrong = 0  # rewards off by more than the tolerance, or a wrong per-row error
        self.bad_wrong = 0  # bad requests not answered with their 4xx
        self.retried_503 = 0
        self.examples: list[str] = []

    def note(self, msg: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(msg)


class Load:
    def __init__(
        self,
        url: str,
        rows: list[dict],
        want: list[Optional[float]],
        texts: list[str],
        weights: str,
        max_body: int,
        seed: int,
        tolerance: float,
        timeout: float = 120.0,
    ):
        import functools

        from rm_jax.serving.client import Client

        # a request unanswered after ``timeout`` seconds is a connection error: counted as lost
        self.Client = functools.partial(Client, api_key=os.environ.get("RM_JAX_API_KEY"), timeout=timeout)
        self.url, self.rows, self.want, self.texts, self.weights = url, rows, want, texts, weights
        self.max_body, self.tolerance = max_body, tolerance
        self.rng = random.Random(seed)

    # one request: (kind, path, body bytes, row indices, expected status)
    def good(self, rng: random.Random, max_rows: int) -> tuple:
        idx = [rng.randrange(len(self.rows)) for _ in range(rng.randint(1, max_rows))]
        if rng.random() < 0.25:
            body = {"query": [self.texts[i] for i in idx], "prompts": ["" for _ in idx], "labels": [None for _ in idx]}
            return "get_reward", "/get_reward", json.dumps(body).encode(), idx, 200
        body = {"rows": [self.rows[i] for i in idx], "weights": self.weights}
        return "score", "/score", json.dumps(body).encode(), idx, 200

    def bad(self, rng: random.Random) -> tuple:
        kind = rng.choice(BAD_KINDS)
        r = self.rows[rng.randrange(len(self.rows))]
        if kind == "invalid_json":
            return kind, "/score", b'{"rows": [{"prompt": "a", "response": ', [], 400
        if kind == "missing_field":
            return kind, "/score", json.dumps({"rows": [r, {"prompt": "x"}]}).encode(), [], 400
        if kind == "non_string":
            return kind, "/score", json.dumps({"rows": [{"prompt": 3, "response": "x"}]}).encode(), [], 400
        if kind == "unknown_preset":
            return kind, "/score", json.dumps({"rows": [r], "weights": "no-such-preset"}).encode(), [], 400
        if kind == "empty_query":
            return kind, "/get_reward", json.dumps({"query": ["x", ""]}).encode(), [], 400
        return (
            kind,
            "/score",
            json.dumps({"rows": [{"prompt": "x" * (self.max_body + 10), "response": "y"}]}).encode(),
            [],
            413,
        )

    def check(self, t: Tally, kind: str, idx: list[int], reply: Any) -> None:
        if kind == "score":
            results = reply.json()["results"]
            got = [(x["reward"], x.get("error")) for x in results]
        else:
            body = reply.json()
            errors = {e["index"]: e["error"] for e in body.get("errors", [])}
            got = [(x, errors.get(i)) for i, x in enumerate(body["rewards"])]
        if len(got) != len(idx):
            with t.lock:
                t.lost += abs(len(idx) - len(got))
                t.note(f"{kind}: {len(got)} answers for {len(idx)} rows")
        for i, (reward, err) in zip(idx, got):
            w = self.want[i]
            ok = (
                (reward is None and err and "more than the limit" in err)
                if w is None
                else (reward is not None and abs(reward - w) <= self.tolerance)
            )
            with t.lock:
                t.rows += 1
                if not ok:
                    t.wrong += 1
                    t.note(f"{kind}: row {i}: got {reward!r} ({err}), want {w!r}")

    def send(self, c: Any, t: Tally, req: tuple, deadline: float) -> None:
        kind, path, body, idx, want_status = req
        start = time.perf_counter()
        while True:
            try:
                reply = c.request("POST", path, body, {"Content-Type": "application/json"})
            except OSError as e:
                with t.lock:
                    t.status["connection error"] += 1
                    t.lost += len(idx)
                    t.note(f"{kind}: {type(e).__name__}: {e}")
                c.close()
                return
            if reply.status == 503 and time.monotonic() < deadline:  # back-pressure: wait as told, retry
                with t.lock:
                    t.retried_503 += 1
                time.sleep(min(float(reply.headers.get("retry-after", "1")), 1.0))
                continue
            break
        dt = time.perf_counter() - start
        with t.lock:
            t.status[reply.status] += 1
        if want_status != 200:
            if reply.status != want_status:
                with t.lock:
                    t.bad_wrong += 1
                    t.note(f"bad request {kind}: status {reply.status}, want {want_status}")
            return
        if reply.status != 200:
            with t.lock:
                t.lost += len(idx)
                t.note(f"{kind}: status {reply.status}: {reply.body[:200]!r}")
            return
        with t.lock:
            t.latency.append(dt)
        self.check(t, kind, idx, reply)

    def sequential(self, t: Tally, n: int, deadline: float) -> float:
        """n one-row /score requests from one client; returns the wall time."""
        c = self.Client(self.url)
        rng = random.Random(self.rng.random())
        start = time.perf_counter()
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            i = rng.randrange(len(self.rows))
            body = json.dumps({"rows": [self.rows[i]], "weights": self.weights}).encode()
            self.send(c, t, ("score", "/score", body, [i], 200), deadline)
        c.close()
        return time.perf_counter() - start

    def concurrent(self, t: Tally, n: int, clients: int, max_rows: int, bad_share: float, deadline: float) -> float:
        rng = random.Random(self.rng.random())
        n_bad = round(n * bad_share)  # exactly this share, spread at random
        reqs = [self.bad(rng) for _ in range(n_bad)] + [self.good(rng, max_rows) for _ in range(n - n_bad)]
        rng.shuffle(reqs)
        lock = threading.Lock()
        it = iter(reqs)

        def worker() -> None:
            c = self.Client(self.url)
            while time.monotonic() < deadline:
                with lock:
                    req = next(it, None)
                if req is None:
                    break
                self.send(c, t, req, deadline)
            c.close()

        threads = [threading.Thread(target=worker) for _ in range(clients)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return time.perf_counter() - start


def pct(xs: list[float], q: float) -> Optional[float]:
    return float(np.percentile(xs, q)) if xs else None


def run(args: argparse.Namespace) -> dict:
    from rm_jax.serving.client import Client, ServerProcess

    deadline = time.monotonic() + args.seconds
    tmp = tempfile.mkdtemp(prefix="rm-load-")
    server = None
    model = args.model
    if args.synthetic:
        model = synthetic_model(args.synthetic, os.path.join(tmp, f"synthetic-{args.synthetic}"))
    if args.url:
        host = args.url.split("//")[-1].split(":")[0].split("/")[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise SystemExit(f"--url {args.url}: loopback only")
        url = args.url
    else:
        server_args = ["--max-body-bytes", str(args.max_body_bytes), "--dtype", args.dtype, *args.server_args.split()]
        server = ServerProcess(model, server_args, log_path=os.path.join(tmp, "server.log"))
        url = server.wait_ready(600)
    try:
        info = Client(url, api_key=os.environ.get("RM_JAX_API_KEY")).get("/info").json()
        model = model or info["model"]
        rows = make_rows(args.distinct_rows, args.seed)
        t0 = time.perf_counter()
        want, texts = expected_rewards(model, rows, args.weights, info["seq_len"], info["dtype"])
        expect_s = time.perf_counter() - t0
        load = Load(url, rows, want, texts, args.weights, info["max_body_bytes"], args.seed, args.tolerance)
        seq, conc = Tally(), Tally()
        seq_s = conc_s = 0.0
        seq_n = -(-args.sequential // args.rounds)
        conc_n = -(-args.requests // args.rounds)
        load.sequential(Tally(), 20, deadline)  # warm the connection path; not counted
        for _ in range(args.rounds):
            seq_s += load.sequential(seq, seq_n, deadline)
            conc_s += load.concurrent(conc, conc_n, args.clients, args.max_rows, args.bad_share, deadline)
        metrics = Client(url, api_key=os.environ.get("RM_JAX_API_KEY")).get("/metrics").body.decode()
    finally:
        code = server.terminate(120) if server else None
    seq_rps = seq.rows / seq_s if seq_s else 0.0
    conc_rps = conc.rows / conc_s if conc_s else 0.0
    n_conc = sum(conc.status.values())
    out = {
        "cpu": cpu_name(),
        "backend": info.get("backend"),
        "devices": info.get("devices"),
        "model": model,
        "seq_len": info["seq_len"],
        "buckets": [f"{b['rows']}x{b['seq_len']}" for b in info["buckets"]],
        # The largest batch: on a CPU one row of seq_len by default (rm-jax serve --max-batch-tokens; compare
        # with --server-args "--max-batch-tokens 16384", the old default, to see what it buys)
        "max_batch_tokens": info.get("max_batch_tokens"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "clients": args.clients,
        "rounds": args.rounds,
        "max_wait_ms": info["max_wait_ms"],
        "sequential": {
            "requests": sum(seq.status.values()),
            "rows": seq.rows,
            "seconds": round(seq_s, 3),
            "rows_per_s": round(seq_rps, 1),
            "p50_ms": _ms(pct(seq.latency, 50)),
            "p99_ms": _ms(pct(seq.latency, 99)),
        },
        "concurrent": {
            "requests": n_conc,
            "good_rows": conc.rows,
            "seconds": round(conc_s, 3),
            "rows_per_s": round(conc_rps, 1),
            "p50_ms": _ms(pct(conc.latency, 50)),
            "p99_ms": _ms(pct(conc.latency, 99)),
            "status": {str(k): v for k, v in sorted(conc.status.items(), key=str)},
            "retried_503": conc.retried_503,
        },
        "speedup": round(conc_rps / seq_rps, 2) if seq_rps else None,
        "lost": seq.lost + conc.lost,
        "wrong": seq.wrong + conc.wrong,
        "bad_not_rejected": conc.bad_wrong,
        "dtype": info["dtype"],
        "tolerance": args.tolerance,
        "examples": seq.examples + conc.examples,
        "server_compilations": _metric(metrics, "rm_serve_xla_compilations_total"),
        "server_exit_code": code,
        "expected_computed_s": round(expect_s, 1),
    }
    return out


# ---------------------------------------------------------------- --compare-old: this round's serving speed-ups

# rm-jax serve as it was before issue 33's scoring work (commits 32013b2, ac5a5fa): the largest batch 16,384
# token slots on every backend (several rows of --seq-len a pass on a CPU) and no persistent compilation cache.
OLD_SERVER_ARGS = ("--max-batch-tokens", "16384")
OLD_SERVER_ENV = {"RM_JAX_COMPILATION_CACHE": "off"}
WORKLOADS = ("short", "long", "mixed")


def compare_rows(
    tokenizer: Any, template: Optional[str], seq_len: int, n_short: int, n_long: int, seed: int
) -> tuple[list[dict], list[int], dict[str, list[int]]]:
    """(rows, each row's token count, workload -> row indices). short: HelpSteer2-shaped rows (prompt and response
    characters drawn with the paper's mean and spread, filled with the bundled sample's text); long: a sample
    response after a prompt of sample texts cut so the templated conversation has 1,024-4,096
    tokens (a quarter to all of ``seq_len`` when that is shorter); mixed: three short rows to one long one."""
    from rm_jax.data.conversation import encode, row_to_messages

    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        src = [json.loads(line) for line in f]
    rng = random.Random(seed)

    def n_tokens(row: dict) -> int:
        return len(encode(tokenizer, [row_to_messages(row)], template)[0])

    corpus = "\n\n".join(r["prompt"] + "\n\n" + r["response"] for r in src)

    def text(n: int) -> str:  # n characters of sample text from a random place
        start = rng.randrange(len(corpus))
        return ((corpus[start:] + "\n\n" + corpus) * (1 + n // len(corpus)))[:n]

    p_chars, r_chars = sample_helpsteer_chars(np.random.default_rng(seed), n_short)
    rows = [
        {"prompt": text(int(p)), "response": text(int(q)) + f" #s{i}"} for i, (p, q) in enumerate(zip(p_chars, r_chars))
    ]
    lo, hi = min(1024, seq_len // 4), min(4096, seq_len) - 8
    for i in range(n_long):
        target = rng.randint(lo, hi)
        j = rng.randrange(len(src))
        response = src[j]["response"][:2000] + f" #l{i}"
        text, k = "", j
        while len(text) < 8 * target:  # comfortably over target tokens; cut below
            k = (k + 1) % len(src)
            text += src[k]["prompt"] + "\n\n" + src[k]["response"] + "\n\n"
        a, b = 1, len(text)  # the longest prompt cut whose conversation fits the target
        while a < b:
            mid = (a + b + 1) // 2
            if n_tokens({"prompt": text[:mid], "response": response}) <= target:
                a = mid
            else:
                b = mid - 1
        rows.append({"prompt": text[:a], "response": response})
    lengths = [len(x) for x in encode(tokenizer, [row_to_messages(r) for r in rows], template)]
    short, long = list(range(n_short)), list(range(n_short, n_short + n_long))
    mixed = rng.sample(short, min(len(short), 3 * len(long))) + long
    rng.shuffle(mixed)
    return rows, lengths, {"short": short, "long": long, "mixed": mixed}


def torch_b1(hf: Any, ids: list[np.ndarray], weights: np.ndarray, want: list[Optional[float]]) -> dict:
    """transformers one conversation at a time (bench_score.py's torch_b1 loops: the cores' threads, and one
    thread), the same conversations: rows/s of each and of the faster, and |reward - rm-jax score's|."""
    from bench_common import cores
    from bench_score import run_torch_batch, torch_sides

    sides = torch_sides(hf, ids, 1, sorted({cores(), 1}, reverse=True), len(weights))
    out: dict = {}
    for name in ("torch_b1", "torch_b1_1t"):
        if name not in sides:
            continue
        threads, batches = sides[name]
        logits = np.zeros((len(ids), len(weights)), np.float32)
        seconds = sum(run_torch_batch(hf, b, threads, logits) for b in batches)
        reward = logits @ weights
        diff = max((abs(float(r) - w) for r, w in zip(reward, want) if w is not None), default=0.0)
        out[name] = {
            "threads": threads,
            "rows": len(ids),
            "seconds": seconds,
            "rows_per_s": len(ids) / seconds,
            "max_abs_diff": diff,
        }
    return out


def _phase(t: Tally, seconds: float) -> dict:
    n = sum(t.status.values())
    return {
        "requests": n,
        "rows": t.rows,
        "seconds": round(seconds, 3),
        "requests_per_s": round(n / seconds, 2) if seconds else None,
        "rows_per_s": round(t.rows / seconds, 2) if seconds else None,
        "p50_ms": _ms(pct(t.latency, 50)),
        "p95_ms": _ms(pct(t.latency, 95)),
        "status": {str(k): v for k, v in sorted(t.status.items(), key=str)},
        "retried_503": t.retried_503,
    }


def compare(args: argparse.Namespace) -> dict:
    """The old and the new serving configuration side by side, the same requests, phases interleaved."""
    from rm_jax.core.attributes import resolve_reward_weights
    from rm_jax.runs.read import load_scoring_model
    from rm_jax.serving.client import Client, ServerProcess

    tmp = tempfile.mkdtemp(prefix="rm-load-compare-")
    model = args.model or synthetic_model(args.synthetic, os.path.join(tmp, f"synthetic-{args.synthetic}"))
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    cache = os.path.join(tmp, "xla_cache")  # the new default's cache, empty at the first start
    base = ["--max-body-bytes", str(args.max_body_bytes), "--dtype", args.dtype, *args.server_args.split()]
    configs = {
        "old": (base + list(OLD_SERVER_ARGS), {**env, **OLD_SERVER_ENV}),
        "new": (base, {**env, "RM_JAX_COMPILATION_CACHE": cache}),
    }
    key = os.environ.get("RM_JAX_API_KEY")
    servers: dict = {}
    out: dict = {"mode": "compare_old_new", "cpu": cpu_name(), "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    out["configs"] = {}

    def start(name: str, log: str) -> tuple[Any, float]:
        t = time.perf_counter()
        s = ServerProcess(model, configs[name][0], log_path=os.path.join(tmp, log), env=configs[name][1])
        try:
            s.wait_ready(900)
        except BaseException:
            s.terminate(30)
            raise
        return s, time.perf_counter() - t

    try:
        for name in configs:  # one after the other: each start compiles alone
            servers[name], ready = start(name, f"server-{name}.log")
            info = Client(servers[name].url, api_key=key).get("/info").json()
            out["configs"][name] = {
                "server_args": configs[name][0],
                "compilation_cache": configs[name][1]["RM_JAX_COMPILATION_CACHE"],
                "max_batch_tokens": info.get("max_batch_tokens"),
                "buckets": [f"{b['rows']}x{b['seq_len']}" for b in info["buckets"]],
                "ready_s": round(ready, 2),
            }
        out.update(backend=info.get("backend"), seq_len=info["seq_len"], dtype=info["dtype"])
        loaded = load_scoring_model(model, dtype=info["dtype"])
        rows, lengths, pools = compare_rows(
            loaded.tokenizer, loaded.template, info["seq_len"], args.short_rows, args.long_rows, args.seed
        )
        t0 = time.perf_counter()
        want, texts = expected_rewards(model, rows, args.weights, info["seq_len"], info["dtype"], loaded=loaded)
        out["expected_computed_s"] = round(time.perf_counter() - t0, 1)
        hf = None
        if args.transformers:
            import torch
            from transformers import AutoModelForSequenceClassification

            from rm_jax.data.conversation import encode, row_to_messages

            hf = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32).eval()
            w = np.asarray(resolve_reward_weights(args.weights, loaded.attributes), np.float32)
        deadline = time.monotonic() + args.seconds
        tallies = {(wl, c): Tally() for wl in WORKLOADS for c in configs}
        secs = dict.fromkeys(tallies, 0.0)
        b1: dict = {wl: [] for wl in WORKLOADS}
        loads: dict = {}
        for wl in WORKLOADS:
            pool = pools[wl]
            mean = float(np.mean([lengths[i] for i in pool]))
            # requests in a phase: about --phase-tokens tokens of rows, 1..--max-rows rows each
            n_req = max(args.clients, round(args.phase_tokens / (mean * (1 + args.max_rows) / 2)))
            sub = ([rows[i] for i in pool], [want[i] for i in pool], [texts[i] for i in pool])
            for c in configs:  # the same seed: both servers get the same requests in the same order
                loads[wl, c] = (
                    Load(
                        servers[c].url,
                        *sub,
                        args.weights,
                        args.max_body_bytes,
                        args.seed,
                        args.tolerance,
                        args.client_timeout,
                    ),
                    n_req,
                )
            out.setdefault("workloads", {})[wl] = {
                "distinct_rows": len(pool),
                "mean_tokens": round(mean, 1),
                "max_tokens": max(lengths[i] for i in pool),
                "requests_per_phase": n_req,
            }
        for r in range(args.rounds):
            for wl in WORKLOADS:
                order = list(configs) if r % 2 == 0 else list(configs)[::-1]
                for c in order:
                    load, n_req = loads[wl, c]
                    secs[wl, c] += load.concurrent(tallies[wl, c], n_req, args.clients, args.max_rows, 0.0, deadline)
                if hf is not None:
                    pick = pools[wl][: args.baseline_rows]
                    ids = encode(loaded.tokenizer, [row_to_messages(rows[i]) for i in pick], loaded.template)
                    ok = [k for k, i in enumerate(pick) if want[i] is not None]
                    b1[wl].append(torch_b1(hf, [ids[k] for k in ok], w, [want[pick[k]] for k in ok]))
        for c in configs:
            m = Client(servers[c].url, api_key=key).get("/metrics").body.decode()
            out["configs"][c]["server_compilations"] = _metric(m, "rm_serve_xla_compilations_total")
    finally:
        codes = {c: s.terminate(120) for c, s in servers.items()}
    # The new configuration started again on its now-filled cache: what a second `rm-jax serve` costs.
    again, ready = start("new", "server-new-again.log")
    out["configs"]["new"]["ready_s_second_start"] = round(ready, 2)
    codes["new_second_start"] = again.terminate(120)
    lost = wrong = 0
    for wl in WORKLOADS:
        row = out["workloads"][wl]
        for c in configs:
            t = tallies[wl, c]
            row[c] = _phase(t, secs[wl, c])
            lost, wrong = lost + t.lost, wrong + t.wrong
            out.setdefault("examples", []).extend(t.examples[:3])
        o, n = row["old"], row["new"]
        row["ratio_requests_per_s"] = (
            round(n["requests_per_s"] / o["requests_per_s"], 2) if o["requests_per_s"] and n["requests_per_s"] else None
        )
        row["ratio_p50"] = round(o["p50_ms"] / n["p50_ms"], 2) if o["p50_ms"] and n["p50_ms"] else None
        row["ratio_p95"] = round(o["p95_ms"] / n["p95_ms"], 2) if o["p95_ms"] and n["p95_ms"] else None
        if b1[wl]:  # rows/s per loop summed over the rounds, the faster loop named
            tb = {}
            for name in b1[wl][0]:
                runs = [x[name] for x in b1[wl]]
                tb[name] = {
                    "threads": runs[0]["threads"],
                    "rows": sum(x["rows"] for x in runs),
                    "rows_per_s": round(
                        sum(x["rows_per_s"] * x["seconds"] for x in runs) / sum(x["seconds"] for x in runs), 2
                    ),
                    "max_abs_diff": max(x["max_abs_diff"] for x in runs),
                }
            best = max(tb, key=lambda k: tb[k]["rows_per_s"])
            row["transformers_b1"] = {**tb, "best": best}
            if n["rows_per_s"]:  # None where the phase ran past --seconds and sent nothing
                row["new_rows_per_s_vs_transformers_b1"] = round(n["rows_per_s"] / tb[best]["rows_per_s"], 2)
    out.update(
        clients=args.clients,
        max_rows=args.max_rows,
        rounds=args.rounds,
        phase_tokens=args.phase_tokens,
        lost=lost,
        wrong=wrong,
        tolerance=args.tolerance,
        server_exit_codes=codes,
        loadavg_1m_end=round(os.getloadavg()[0], 2),
        model=model,
    )
    return out


def compare_table(out: dict) -> str:
    """The --compare-old result as a markdown table (docs/serving.md carries one)."""
    lines = [
        "| workload (mean tokens) | old req/s | new req/s | x | old p50 / p95 ms | new p50 / p95 ms "
        "| transformers b1 rows/s | new rows/s | x b1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
    for wl, r in out["workloads"].items():
        o, n, tb = r["old"], r["new"], r.get("transformers_b1")
        lines.append(
            f"| {wl} ({r['mean_tokens']:.0f}) | {o['requests_per_s']} | {n['requests_per_s']} | "
            f"{r['ratio_requests_per_s']} | {f(o['p50_ms'])} / {f(o['p95_ms'])} | {f(n['p50_ms'])} / "
            f"{f(n['p95_ms'])} | "
            + (f"{tb[tb['best']]['rows_per_s']} ({tb['best']}) | " if tb else "- | ")
            + f"{n['rows_per_s']} | {r.get('new_rows_per_s_vs_transformers_b1', '-')} |"
        )
    c = out["configs"]
    lines.append(
        f"start-up to ready: old {c['old']['ready_s']} s (buckets {' '.join(c['old']['buckets'])}), new "
        f"{c['new']['ready_s']} s cold cache (buckets {' '.join(c['new']['buckets'])}), new second start "
        f"{c['new'].get('ready_s_second_start')} s; lost {out['lost']}, wrong {out['wrong']}"
    )
    return "\n".join(lines)


def _ms(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x * 1000, 2)


def _metric(text: str, name: str) -> Optional[float]:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF folder or run folder: start rm-jax serve on it (port chosen freely)")
    src.add_argument(
        "--synthetic", choices=["tiny", "small", "1b"], help="start rm-jax serve on a random model of this size"
    )
    src.add_argument("--url", help="a running server on loopback (http://127.0.0.1:PORT)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2400, help="concurrent-phase requests, all rounds")
    ap.add_argument("--sequential", type=int, default=600, help="one-row requests, all rounds")
    ap.add_argument("--rounds", type=int, default=3, help="sequential and concurrent phases alternate this often")
    ap.add_argument("--max-rows", type=int, default=8, help="rows per concurrent request: 1..N")
    ap.add_argument("--bad-share", type=float, default=0.1)
    ap.add_argument("--distinct-rows", type=int, default=400)
    ap.add_argument("--weights", default="70b-rewardbench")
    ap.add_argument("--seconds", type=float, default=600, help="wall-time bound for the load phases")
    ap.add_argument("--max-body-bytes", type=int, default=256 * 1024, help="server limit (oversize requests exceed it)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="server compute dtype")
    ap.add_argument("--client-timeout", type=float, default=120.0, help="seconds a request may wait (else lost)")
    ap.add_argument("--tolerance", type=float, default=1e-5, help="largest |reward - rm-jax score's| accepted")
    ap.add_argument("--server-args", default="", help="more rm-jax serve flags, one string")
    ap.add_argument("--quick", action="store_true", help="short run: 300 concurrent + 100 sequential requests")
    ap.add_argument("--min-speedup", type=float, default=None, help="fail unless concurrent/sequential >= this")
    ap.add_argument("--seed", type=int, default=0)
    cmp = ap.add_argument_group("--compare-old: this round's serving speed-ups, old and new configuration side by side")
    cmp.add_argument(
        "--compare-old",
        action="store_true",
        help="start the server twice, as before issue 33 (--max-batch-tokens 16384, RM_JAX_COMPILATION_CACHE=off) "
        "and with the new defaults, and send both the same short / long / mixed requests (use --synthetic small)",
    )
    cmp.add_argument("--short-rows", type=int, default=64, help="distinct HelpSteer2 sample rows (short, mixed)")
    cmp.add_argument("--long-rows", type=int, default=24, help="distinct 1,024-4,096-token rows (long, mixed)")
    cmp.add_argument("--phase-tokens", type=int, default=120_000, help="about this many row tokens per phase")
    cmp.add_argument("--baseline-rows", type=int, default=16, help="rows per workload timed through transformers")
    cmp.add_argument(
        "--no-transformers", dest="transformers", action="store_false", help="skip the transformers batch-1 loop"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object (also to $OUT/load_test.json)")
    return ap


def load_test(argv: list[str]) -> dict:
    """The whole test as a function (for other benchmark scripts): same flags, returns the JSON object.
    E.g. ``load_test(["--synthetic", "tiny", "--quick"])["concurrent"]["rows_per_s"]``."""
    a = parser().parse_args(argv)
    if a.compare_old:
        if a.url:
            raise SystemExit("--compare-old starts its own two servers: use --model or --synthetic, not --url")
        if a.quick:
            a.phase_tokens, a.rounds = min(a.phase_tokens, 40_000), min(a.rounds, 2)
            a.short_rows, a.long_rows, a.baseline_rows = min(a.short_rows, 32), min(a.long_rows, 8), 8
        out = compare(a)
        out["ok"] = out["lost"] == 0 and out["wrong"] == 0 and all(v == 0 for v in out["server_exit_codes"].values())
        return out
    if a.quick:
        a.requests, a.sequential, a.rounds = min(a.requests, 300), min(a.sequential, 100), min(a.rounds, 2)
    out = run(a)
    ok = (
        out["lost"] == 0 and out["wrong"] == 0 and out["bad_not_rejected"] == 0 and out["server_exit_code"] in (0, None)
    )
    if a.min_speedup is not None:
        ok = ok and (out["speedup"] or 0) >= a.min_speedup
    out["ok"] = ok
    return out


def main(argv: Optional[list[str]] = None) -> int:
    a = parser().parse_args(argv)
    out = load_test(sys.argv[1:] if argv is None else argv)
    ok = out["ok"]
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "load_test.json"), "w") as f:
            json.dump(out, f, indent=2)
    if a.json:
        print(json.dumps(out))
    elif a.compare_old:
        print(compare_table(out))
        print("OK" if ok else "FAILED")
    else:
        s, c = out["sequential"], out["concurrent"]
        print(
            f"cpu: {out['cpu']}  backend: {out['backend']}  model: {out['model']}  buckets: {' '.join(out['buckets'])}"
        )
        print(
            f"sequential (1 row/request, 1 client): {s['requests']} requests, {s['rows_per_s']} rows/s, "
            f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms"
        )
        print(
            f"concurrent ({out['clients']} clients, 1-{a.max_rows} rows, {a.bad_share:.0%} bad): {c['requests']} "
            f"requests, {c['good_rows']} good rows, {c['rows_per_s']} rows/s, p50 {c['p50_ms']} ms, "
            f"p99 {c['p99_ms']} ms; status {c['status']}; 503 retried {c['retried_503']}"
        )
        print(
            f"speedup {out['speedup']}x; lost {out['lost']}, wrong {out['wrong']}, bad requests not rejected "
            f"{out['bad_not_rejected']}; server compilations {out['server_compilations']}; "
            f"server exit {out['server_exit_code']}"
        )
        for e in out["examples"]:
            print("  " + e)
        print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
