"""Dynamic batching: one thread owns the jitted scorer and packs rows from concurrent requests into the
fixed shapes compiled at start-up.

Flow. A request's token ids become a :class:`Job`; :meth:`Batcher.submit` admits it (or raises
:class:`QueueFull`) and appends its rows to one FIFO queue of rows. The batcher thread takes the longest
FIFO prefix that packs into the largest bucket, pads it to the smallest bucket that holds it, runs the
forward pass, and writes each row's scores into its job's output by row index, so answers come back in
each request's row order however rows were packed. A job's rows may span several batches; when its
last row is written, the job's ``done`` callback fires (the app hands the result to the event loop).

When to run. If rows are waiting and the batcher is free, it runs them at once, unless the largest
bucket is not yet full *and* another request is still being read or tokenized (``incoming``); then it
waits for that request, but never past ``max_wait`` after the oldest waiting row arrived. So a lone
client pays no batching delay, concurrent clients share batches, and no row waits more than
``max_wait`` for company (time spent behind a running batch is queueing, not batching delay).

Back-pressure. At most ``max_queue`` rows are admitted and not yet in a batch; beyond that a request is
refused with a Retry-After estimate from the measured row rate. A client that goes away cancels its job:
its queued rows are dropped when they reach the head of the queue, its finished ones are discarded;
nothing the batcher does waits on a client.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from rm_jax.data.packing import build_batch
from rm_jax.serving.buckets import Bucket, fitting_prefix, plan
from rm_jax.serving.prometheus import ServeMetrics

log = logging.getLogger("rm_jax.serve")

ScoreFn = Callable[[dict, Bucket], np.ndarray]  # a packed batch -> [rows, max_segments, num_labels]


class QueueFull(Exception):
    def __init__(self, retry_after: int, queued: int, limit: int):
        super().__init__(f"the queue holds {queued} rows (limit {limit}); retry in {retry_after} s")
        self.retry_after = retry_after


class NotReady(Exception):
    def __init__(self, state: str, retry_after: int = 1):
        super().__init__(f"the server is {state}")
        self.state, self.retry_after = state, retry_after


@dataclass(eq=False)
class Job:
    ids: list[np.ndarray]
    out: np.ndarray  # [n, num_labels] float32, filled by row index
    done: Callable[[Optional[BaseException]], None]  # called once, from the batcher thread
    enqueued: float = field(default_factory=time.monotonic)
    queued: int = 0  # rows still in the queue
    queued_tokens: int = 0
    remaining: int = 0  # rows not yet scored
    cancelled: bool = False
    finished: bool = False


class Batcher:
    def __init__(
        self,
        score_fn: ScoreFn,
        buckets: Sequence[Bucket],
        num_labels: int,
        pad_id: int,
        max_queue: int,
        max_wait_s: float,
        metrics: Optional[ServeMetrics] = None,
    ):
        self.score_fn, self.buckets = score_fn, sorted(buckets, key=lambda b: b.tokens)
        self.num_labels, self.pad_id = num_labels, pad_id
        self.max_queue, self.max_wait_s = max_queue, max_wait_s
        self.metrics = metrics or ServeMetrics()
        self._cond = threading.Condition()
        self._queue: deque[tuple[Job, int]] = deque()  # (job, row index), oldest first
        self._queued_rows = 0
        self._queued_tokens = 0
        self._incoming = 0
        self._stopping = False
        self._rows_per_s = 0.0  # running estimate, for Retry-After
        self.ready = threading.Event()
        self.state = "starting"  # starting -> compiling -> ready -> stopped | failed: ...
        self._thread: Optional[threading.Thread] = None
        self._running: set[Job] = set()  # jobs in the batch being run
        self.metrics.watch_queue(lambda: self._queued_rows)

    # ------------------------------------------------------------ event-loop side

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Around reading and tokenizing a request: the batcher may wait (bounded) for its rows."""
        with self._cond:
            self._incoming += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                self._cond.notify()

    def submit(self, ids: Sequence[np.ndarray], done: Callable[[Optional[BaseException]], None]) -> Job:
        """Queue a request's rows; raises NotReady or QueueFull. ``done(None)`` fires when every row is
        scored (``job.out`` holds them), ``done(exc)`` if its batch failed. No rows: done at once."""
        job = Job(list(ids), np.zeros((len(ids), self.num_labels), np.float32), done)
        if not job.ids:
            job.finished = True
            done(None)
            return job
        n = len(job.ids)
        with self._cond:
            if not self.ready.is_set() or self._stopping:
                raise NotReady(self.state if not self._stopping else "shutting down")
            if n > self.max_queue:
                raise ValueError(f"{n} rows in one request, more than --max-queue {self.max_queue}")
            if self._queued_rows + n > self.max_queue:
                raise QueueFull(self._retry_after(n), self._queued_rows, self.max_queue)
            job.queued = job.remaining = n
            job.queued_tokens = sum(len(x) for x in job.ids)
            self._queue.extend((job, i) for i in range(n))
            self._queued_rows += n
            self._queued_tokens += job.queued_tokens
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job's queued rows (lazily, at the head) and its results."""
        with self._cond:
            if job.cancelled or job.finished:
                return
            self._unqueue_locked(job)
            self._cond.notify()

    def _unqueue_locked(self, job: Job) -> None:
        """Take a job's rows out of the queue counts; its entries are skipped when they reach the head."""
        job.cancelled = True
        self._queued_rows -= job.queued
        self._queued_tokens -= job.queued_tokens
        job.queued = job.queued_tokens = 0

    def _retry_after(self, n: int) -> int:
        rate = self._rows_per_s
        if rate <= 0:
            return 1
        return int(min(60, max(1, math.ceil((self._queued_rows + n - self.max_queue) / rate + 0.5))))

    # ------------------------------------------------------------ the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="rm-serve-batcher", daemon=True)
        self._thread.start()

    def close(self, timeout: Optional[float] = None) -> None:
        """Score what is queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.state == "ready":
            self.state = "stopped"

    def _main(self) -> None:
        try:
            self.state = "compiling"
            self._warm_up()
            self.state = "ready"
            self.metrics.ready.set(1)
            self.ready.set()
            log.info(
                "ready: compiled %d batch shapes (%s)", len(self.buckets), ", ".join(b.name() for b in self.buckets)
            )
            while True:
                taken = self._next_batch()
                if taken is None:
                    return
                if taken[0]:
                    self._run(*taken)
        except BaseException as e:  # a bug: fail every waiting request rather than leave it hanging
            self.state = f"failed: {type(e).__name__}: {e}"
            self.metrics.ready.set(0)
            log.exception("batcher thread failed")
            with self._cond:
                self._stopping = True
                jobs = {j for j, _ in self._queue} | self._running
                for j in jobs:
                    j.queued = j.queued_tokens = 0
                self._queue.clear()
                self._queued_rows = self._queued_tokens = 0
            for j in jobs:
                self._fail(j, e)
            self.ready.set()  # waiters see the failed state

    def _warm_up(self) -> None:
        """Compile every bucket now (one dummy conversation each), so no request ever waits on XLA."""
        one = [np.asarray([self.pad_id], np.int32)]
        for b in self.buckets:
            t = time.perf_counter()
            self.score_fn(self._batch(one, [[0]], b), b)
            log.info("compiled %s (max %d conversations) in %.1f s", b.name(), b.slots, time.perf_counter() - t)

    def _batch(self, ids: Sequence[np.ndarray], bins: list[list[int]], b: Bucket) -> dict:
        zeros = np.zeros((len(ids), 1), np.float32)  # no labels at serving time
        return build_batch(ids, zeros, zeros, bins, b.seq_len, b.max_segments, self.pad_id, rows=b.rows)

    def _next_batch(self) -> Optional[tuple[list[tuple[Job, int]], Bucket, list[list[int]]]]:
        """Wait for rows (see the module docstring for when), then take the next batch off the queue."""
        big = self.buckets[-1]
        with self._cond:
            while True:
                while self._queue and self._queue[0][0].cancelled:
                    self._queue.popleft()
                if not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                wait = self._queue[0][0].enqueued + self.max_wait_s - time.monotonic()
                full = self._queued_tokens >= big.tokens or self._queued_rows >= big.slots
                if not full and self._incoming > 0 and wait > 0 and not self._stopping:
                    self._cond.wait(wait)
                    continue
                # Candidates: a FIFO prefix bounded by the largest bucket's token and conversation slots.
                cand: list[tuple[Job, int]] = []
                tokens = 0
                while self._queue and len(cand) < big.slots:
                    job, i = self._queue[0]
                    if job.cancelled:
                        self._queue.popleft()
                        continue
                    if cand and tokens + len(job.ids[i]) > big.tokens:
                        break
                    cand.append(self._queue.popleft())
                    tokens += len(job.ids[i])
                break
        # Packing runs without the lock: submitters are never held up by it.
        k = fitting_prefix([len(j.ids[i]) for j, i in cand], self.buckets)
        with self._cond:
            self._queue.extendleft(reversed(cand[k:]))  # back to the front, in order
            taken = []
            for j, i in cand[:k]:
                if j.cancelled:  # went away while we packed: its counts are already gone
                    continue
                n = len(j.ids[i])
                j.queued -= 1
                j.queued_tokens -= n
                self._queued_rows -= 1
                self._queued_tokens -= n
                taken.append((j, i))
        if not taken:
            return [], self.buckets[0], []
        found = plan([len(j.ids[i]) for j, i in taken], self.buckets)
        assert found is not None, "a prefix that fits the largest bucket always has a bucket"
        return taken, found[0], found[1]

    def _run(self, taken: list[tuple[Job, int]], bucket: Bucket, bins: list[list[int]]) -> None:
        start = time.monotonic()
        self._running = {j for j, _ in taken}
        ids = [j.ids[i] for j, i in taken]
        try:
            scores = self.score_fn(self._batch(ids, bins, bucket), bucket)
        except Exception as e:  # this batch's requests get a 500; the server goes on
            log.exception("a batch of %d conversations (%s) failed", len(taken), bucket.name())
            self.metrics.batch_failures.inc()
            for j in {j for j, _ in taken}:
                self._fail(j, e)
            return
        dt = time.monotonic() - start
        real = sum(len(x) for x in ids)
        m = self.metrics
        m.batches.labels(bucket.name()).inc()
        m.batch_rows.observe(len(taken))
        m.batch_fill.observe(real / bucket.tokens)
        m.batch_seconds.observe(dt)
        m.tokens.inc(real)
        for j in {j for j, _ in taken}:
            m.queue_wait.observe(start - j.enqueued)
        rate = len(taken) / max(dt, 1e-6)
        self._rows_per_s = rate if self._rows_per_s == 0 else 0.8 * self._rows_per_s + 0.2 * rate
        # Scores go back by (row, slot) -> the conversation's position in `taken` -> (job, row index).
        for r, row in enumerate(bins):  # build_batch puts bin r's s-th conversation in slot (r, s)
            for s, k in enumerate(row):
                job, i = taken[k]
                if job.cancelled or job.finished:
                    continue
                job.out[i] = scores[r, s]
                job.remaining -= 1
                if job.remaining == 0:
                    job.finished = True
                    self._notify(job, None)

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._cond:
            if job.finished:
                return
            job.finished = True
            if not job.cancelled:
                self._unqueue_locked(job)  # its rows still queued are skipped
        self._notify(job, exc)

    @staticmethod
    def _notify(job: Job, exc: Optional[BaseException]) -> None:
        try:
            job.done(exc)
        except Exception:  # e.g. the event loop already closed: nobody is waiting any more
            log.debug("could not deliver a result", exc_info=True)
