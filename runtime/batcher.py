"""Micro-batching: gather concurrent requests into one engine call, fairly and within bounds.

Requests are queued in arrival order. The worker takes the first one, then keeps taking more
until `max_batch` events are gathered or `max_wait_ms` has passed since the first (it waits
only while other requests are about to be queued: a lone request runs at once), and runs them
as one `Engine.apply` (in a worker thread, so the event loop keeps accepting). The engine splits
repeated users into waves, so two events of one user are applied in arrival order.

Fairness: a request larger than what is left of the batch gives only a slice of its events
to this batch and goes to the back of the queue with the rest, and a long replay (a PUT of a
long history: `Engine.reset_steps`) runs one slice per turn, so one big request never holds
everyone else's events for the whole of its run. Other operations (forget) run alone, in
order. Bounds: at most `max_inflight` events are queued or running, a PUT's history counting
as its length and a forget as one; `admit` waits for room, so a client that sends faster than
the engine applies is slowed, not buffered.

Nothing half-applied without saying so: when the engine fails on a batch (the store refuses
its commit, ORT raises), nothing of that batch was applied. A request with no event applied
yet gets the error itself; a request cut into slices whose earlier slices were applied gets
its results so far and, for each event from the failed slice on, a `NotApplied` error in its
place (its later slices are not run: they may hold later events of the same users).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any

from recblr.runtime.engine import Engine
from recblr.runtime.errors import RuntimeUserError
from recblr.runtime.jsonio import Event


class NotApplied(RuntimeUserError, status=503, code="not_applied"):
    """One event of a partly applied request that was not applied (the engine failed on its
    slice, or on an earlier one): retrying it (with its seq) is safe."""


class _Job:
    __slots__ = ("events", "done", "results", "fn", "steps", "fut", "weight")

    def __init__(self, fut, events=None, fn=None, steps=None, weight=0):
        self.fut = fut
        self.events: list[Event] | None = events
        self.done = 0  # events already applied (a request cut into slices)
        self.results: list = []
        self.fn = fn
        self.steps: Generator | None = steps
        self.weight = weight  # what a job without events counts in `inflight`


class MicroBatcher:
    def __init__(
        self,
        engine: Engine,
        max_batch: int = 256,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
        more_coming: Callable[[], bool] | None = None,
        max_inflight: int = 65536,
    ):
        self.engine = engine
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.on_batch = on_batch
        # whether requests are being read right now (not yet queued): a batch only waits for
        # more while some are, so a lone client never pays max_wait_ms.
        self.more_coming = more_coming
        self.max_inflight = max(1, int(max_inflight))
        self._q: asyncio.Queue[_Job | None] | None = None
        self._task: asyncio.Task | None = None
        self._held: _Job | None = None
        self._wake: asyncio.Future | None = None  # set while the worker waits to fill a batch
        self._room: asyncio.Event | None = None
        self.inflight = 0

    def _put(self, job: _Job | None) -> None:
        self._q.put_nowait(job)
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    async def start(self) -> None:
        self._q = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self._task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        """Finish everything queued, then stop."""
        if self._task is None:
            return
        self._put(None)
        await self._task
        self._task = None

    # ----------------------------------------------------------------- submitting
    async def admit(self, n: int) -> None:
        """Wait until `n` more events fit under `max_inflight` (a request larger than the
        bound is let in alone)."""
        while self.inflight and self.inflight + n > self.max_inflight:
            self._room.clear()
            await self._room.wait()

    def submit_nowait(self, events: list[Event]) -> asyncio.Future:
        """Queue events without waiting for room (the caller bounds itself: see `admit`)."""
        fut = asyncio.get_running_loop().create_future()
        self.inflight += len(events)
        self._put(_Job(fut, events=events))
        return fut

    async def submit(self, events: list[Event]) -> list:
        await self.admit(len(events))
        return await self.submit_nowait(events)

    async def call(self, fn: Callable[[], Any], weight: int = 0) -> Any:
        """Run `fn` alone, in queue order; `weight` > 0 counts it in `inflight` (admitted
        first: a client request), 0 leaves it out (the server's own work: a cell swap)."""
        return await self._alone(_Job(None, fn=fn, weight=weight))

    async def call_steps(self, steps: Generator, weight: int = 1) -> Any:
        """Run a generator one step per turn (other work runs between steps); its return
        value is the answer. It counts `weight` in `inflight` (a replay: its length)."""
        return await self._alone(_Job(None, steps=steps, weight=weight))

    async def _alone(self, job: _Job) -> Any:
        if job.weight:
            await self.admit(job.weight)
            self.inflight += job.weight
        job.fut = asyncio.get_running_loop().create_future()
        self._put(job)
        return await job.fut

    # ----------------------------------------------------------------- the worker
    async def _next(self, timeout: float | None) -> _Job | None | bool:
        if self._held is not None:
            j, self._held = self._held, None
            return j
        if timeout is None:
            return await self._q.get()
        if not self._q.empty():
            return self._q.get_nowait()
        return False

    async def _fill_wait(self, deadline: float) -> None:
        """Wait until a job is queued or the loop time reaches `deadline` (one timer per
        batch, not a task and a timer per queued request)."""
        loop = asyncio.get_running_loop()
        fut = self._wake = loop.create_future()
        h = loop.call_at(deadline, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            h.cancel()
            self._wake = None

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._next(None)
            if first is None:
                break
            if first.events is None:
                await self._run_alone(first)
                continue
            batch: list[tuple[_Job, int]] = []  # (job, events taken from it)
            n = self._take(first, batch, 0)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                if self._held is None and self._q.empty():
                    idle = self.more_coming is not None and not self.more_coming()
                    if idle or loop.time() >= deadline:
                        break
                    await self._fill_wait(deadline)
                    continue
                j = await self._next(0)
                if j is None:
                    stopping = True
                    break
                if j.events is None:
                    self._held = j
                    break
                n = self._take(j, batch, n)
            await self._run_events(batch, n)
        # drain whatever was queued before stop
        while self._held is not None or (self._q is not None and not self._q.empty()):
            j = await self._next(0)
            if j is None or j is False:
                continue
            if j.events is None:
                await self._run_alone(j)
            else:
                batch = []
                await self._run_events(batch, self._take(j, batch, 0))

    def _take(self, job: _Job, batch: list, n: int) -> int:
        """Put as much of `job` into the batch as fits; the rest goes to the back of the
        queue (after this batch runs, behind everything queued meanwhile)."""
        left = len(job.events) - job.done
        take = min(left, self.max_batch - n)
        batch.append((job, take))
        if take < left:
            self._q.put_nowait(job)
        return n + take

    async def _run_alone(self, job: _Job) -> None:
        try:
            if job.steps is not None:
                finished, value = await asyncio.to_thread(_step, job.steps)
                if not finished:
                    self._q.put_nowait(job)  # its next slice, after what is queued now
                    return
            else:
                value = await asyncio.to_thread(job.fn)
        except Exception as e:
            self._release(job.weight)
            _settle(job.fut, error=e)
            return
        self._release(job.weight)
        _settle(job.fut, result=value)

    async def _run_events(self, batch: list[tuple[_Job, int]], n: int) -> None:
        events = [e for j, take in batch for e in j.events[j.done : j.done + take]]
        t0 = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.engine.apply, events)
        except Exception as e:  # engine failure: nothing of this batch was applied
            for j, take in batch:
                left = len(j.events) - j.done  # this slice and the ones not run yet
                self._release(take)
                if left > take:
                    self._release(left - take)  # its later slices, still counted, never run
                if j.done == 0:  # nothing of the request applied: it fails as a whole
                    _settle(j.fut, error=e)
                else:
                    why = _why(e, j.done)
                    j.results.extend(NotApplied(why) for _ in range(left))
                    _settle(j.fut, result=j.results)
                j.done = len(j.events)  # a queued rest of it is skipped (taken as 0 events)
            return
        if self.on_batch is not None:
            self.on_batch(n, time.perf_counter() - t0)
        i = 0
        for j, take in batch:
            j.results.extend(results[i : i + take])
            i += take
            j.done += take
            self._release(take)
            if j.done == len(j.events):
                _settle(j.fut, result=j.results)

    def _release(self, n: int) -> None:
        self.inflight -= n
        if self.inflight + 1 <= self.max_inflight and not self._room.is_set():
            self._room.set()


def _why(e: Exception, applied: int) -> str:
    what = str(e) if isinstance(e, RuntimeUserError) else f"{type(e).__name__}: {e}"
    return (
        f"not applied: the engine failed on this request's slice after its first {applied} "
        f"events were applied ({what}); retry this event"
    )


def _step(steps: Generator) -> tuple[bool, Any]:
    """One step of a generator: (finished, its return value). StopIteration cannot cross a
    thread's future, so it is caught here."""
    try:
        next(steps)
    except StopIteration as done:
        return True, done.value
    return False, None


def _settle(fut: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if fut.done():  # the client went away and its future was cancelled
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
