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

Prompt sharing (``share``: ``auto`` / True / False, ``--share-prompts``). Rows with one prompt key (a
request's ``groups``; rows of different requests with equal keys too) may be laid out as their common token
prefix once and each row's rest after it (rm_jax.data.prefix_sharing), the same scores up to float
rounding. Then the batch is the longest FIFO prefix that packs into the largest bucket *in that layout*, so
n samples of one prompt fit n times fewer prompt tokens into the same ``--max-batch-tokens``. ``auto``
shares a batch only where that saves at least ``AUTO_MIN_SAVED`` of its tokens (as ``rm-jax score``),
else packs it plain. Rows without a key (``/get_reward`` texts) never share.

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
from typing import Callable, Hashable, Iterator, Optional, Sequence

import numpy as np

from rm_jax.core.config import SharePrompts
from rm_jax.data.packing import build_batch
from rm_jax.data.prefix_sharing import Unit, build_shared_batch
from rm_jax.serving.buckets import (
    Bucket,
    SharedPlan,
    SharedTally,
    fitting_prefix,
    fitting_shared_prefix,
    plan,
    plan_shared_bucket,
)
from rm_jax.serving.prometheus import ServeMetrics

log = logging.getLogger("rm_jax.serve")

# (a packed batch, its bucket, whether it has the shared-prompt layout) -> [rows, max_segments, num_labels]
ScoreFn = Callable[[dict, Bucket, bool], np.ndarray]
# share=auto lays a batch out shared only where that saves at least this share of its tokens (rm-jax score's rule)
AUTO_MIN_SAVED = 0.1


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
    groups: Optional[list[Optional[Hashable]]] = None  # a prompt key per row (None: the row shares with none)

    def key(self, i: int) -> Hashable:
        g = None if self.groups is None else self.groups[i]
        return ("row", id(self), i) if g is None else ("prompt", g)


@dataclass
class Taken:
    """The rows of the next batch, their bucket and layout: ``units`` None is the plain layout (``bins`` rows of
    indices into ``rows``), else the shared one (``bins`` rows of indices into ``units``)."""

    rows: list[tuple[Job, int]]
    bucket: Bucket
    bins: list[list[int]]
    units: Optional[list[Unit]] = None
    tokens_unshared: int = 0
    tokens: int = 0


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
        share: SharePrompts = False,
    ):
        if share not in ("auto", True, False):
            raise ValueError(f"share must be auto, True or False, got {share!r}")
        self.share = share
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

    def submit(
        self,
        ids: Sequence[np.ndarray],
        done: Callable[[Optional[BaseException]], None],
        groups: Optional[Sequence[Optional[Hashable]]] = None,
    ) -> Job:
        """Queue a request's rows; raises NotReady or QueueFull. ``done(None)`` fires when every row is
        scored (``job.out`` holds them), ``done(exc)`` if its batch failed. No rows: done at once.
        ``groups``: a prompt key per row (equal keys: the same prompt, which the batch may share)."""
        if groups is not None and len(groups) != len(ids):
            raise ValueError(f"{len(groups)} prompt keys for {len(ids)} rows")
        groups = list(groups) if groups is not None else None
        job = Job(list(ids), np.zeros((len(ids), self.num_labels), np.float32), done, groups=groups)
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
                if taken.rows:
                    self._run(taken)
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
            batch = self._batch(one, [[0]], b)
            self.score_fn(batch, b, False)
            if self.share is not False and b.max_segments > 1:  # the shared layout's function (compiled once
                # for both where the configured kernel reads it): a 1-token prompt and two 1-token responses
                two = [np.asarray([self.pad_id] * 2, np.int32)] * 2
                self.score_fn(self._batch(two, [[0]], b, [Unit(1, (0, 1))]), b, True)
            log.info("compiled %s (max %d conversations) in %.1f s", b.name(), b.slots, time.perf_counter() - t)

    def _batch(
        self, ids: Sequence[np.ndarray], bins: list[list[int]], b: Bucket, units: Optional[list[Unit]] = None
    ) -> dict:
        zeros = np.zeros((len(ids), 1), np.float32)  # no labels at serving time
        if units is not None:
            return build_shared_batch(
                ids, zeros, zeros, units, bins, b.seq_len, b.max_segments, self.pad_id, rows=b.rows
            )
        return build_batch(ids, zeros, zeros, bins, b.seq_len, b.max_segments, self.pad_id, rows=b.rows)

    def _next_batch(self) -> Optional[Taken]:
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
                # Candidates: a FIFO prefix bounded by the largest bucket's token and conversation slots
                # (tokens counted with each prompt group's common prefix once where prompts may be shared).
                cand: list[tuple[Job, int]] = []
                tally = SharedTally() if self.share is not False else None
                tokens = 0
                while self._queue and len(cand) < big.slots:
                    job, i = self._queue[0]
                    if job.cancelled:
                        self._queue.popleft()
                        continue
                    x = job.ids[i]
                    after = tally.cost(x, job.key(i)) if tally is not None else tokens + len(x)
                    if cand and after > big.tokens:
                        break
                    cand.append(self._queue.popleft())
                    tokens = after
                    if tally is not None:
                        tally.add(x, job.key(i))
                break
        # Packing runs without the lock: submitters are never held up by it.
        shared = self._shared_prefix(cand)
        k = shared if shared is not None else fitting_prefix([len(j.ids[i]) for j, i in cand], self.buckets)
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
            return Taken([], self.buckets[0], [])
        lengths = [len(j.ids[i]) for j, i in taken]
        if shared is not None:
            sp = plan_shared_bucket([j.ids[i] for j, i in taken], [j.key(i) for j, i in taken], self.buckets)
            if sp is not None:
                return Taken(taken, sp.bucket, sp.bins, sp.units, sum(lengths), sp.report.tokens)
        found = plan(lengths, self.buckets)
        assert found is not None, "a prefix that fits the largest bucket always has a bucket"
        return Taken(taken, found[0], found[1], None, sum(lengths), sum(lengths))

    def _shared_prefix(self, cand: list[tuple[Job, int]]) -> Optional[int]:
        """How many candidates the next batch takes in the shared layout, or None where it is plain: sharing
        off, no two candidates with one prompt key, or (``auto``) saving under ``AUTO_MIN_SAVED``."""
        if self.share is False or not cand:
            return None
        keys = [j.key(i) for j, i in cand]
        if len(set(keys)) == len(keys):
            return None
        ids = [j.ids[i] for j, i in cand]
        k = fitting_shared_prefix(ids, keys, self.buckets)
        if k == 0:
            return None
        if self.share == "auto":
            sp: Optional[SharedPlan] = plan_shared_bucket(ids[:k], keys[:k], self.buckets[-1:])
            if sp is None or sp.report.prompt_tokens_saved < AUTO_MIN_SAVED * sp.report.tokens_unshared:
                return None
        return k

    def _run(self, t: Taken) -> None:
        taken, bucket, bins = t.rows, t.bucket, t.bins
        start = time.monotonic()
        self._running = {j for j, _ in taken}
        ids = [j.ids[i] for j, i in taken]
        try:
            batch = self._batch(ids, bins, bucket, t.units)
            scores = self.score_fn(batch, bucket, t.units is not None)
        except Exception as e:  # this batch's requests get a 500; the server goes on
            log.exception("a batch of %d conversations (%s) failed", len(taken), bucket.name())
            self.metrics.batch_failures.inc()
            for j in {j for j, _ in taken}:
                self._fail(j, e)
            return
        dt = time.monotonic() - start
        real = t.tokens  # as laid out: a shared prompt counts once
        m = self.metrics
        m.batches.labels(bucket.name()).inc()
        m.batch_rows.observe(len(taken))
        m.batch_fill.observe(real / bucket.tokens)
        m.batch_seconds.observe(dt)
        m.tokens.inc(real)
        if t.tokens_unshared > real:
            m.prompt_tokens_saved.inc(t.tokens_unshared - real)
            m.shared_batches.inc()
        for j in {j for j, _ in taken}:
            m.queue_wait.observe(start - j.enqueued)
        rate = len(taken) / max(dt, 1e-6)
        self._rows_per_s = rate if self._rows_per_s == 0 else 0.8 * self._rows_per_s + 0.2 * rate
        # Scores go back by (row, slot) -> the conversation's position in `taken` (the batch's example_index,
        # in either layout) -> (job, row index).
        for (r, s), k in np.ndenumerate(batch["example_index"]):
            if k >= 0:
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
