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
order. Bounds: at most `max_inflight` events are queued or running; `admit` waits for room,
so a client that sends faster than the engine applies is slowed, not buffered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any

from recblr.runtime.engine import Engine
from recblr.runtime.jsonio import Event


class _Job:
    __slots__ = ("events", "done", "results", "fn", "steps", "fut")

    def __init__(self, fut, events=None, fn=None, steps=None):
        self.fut = fut
        self.events: list[Event] | None = events
        self.done = 0  # events already applied (a request cut into slices)
        self.results: list = []
        self.fn = fn
        self.steps: Generator | None = steps


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

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` alone, in queue order."""
        fut = asyncio.get_running_loop().create_future()
        self._put(_Job(fut, fn=fn))
        return await fut

    async def call_steps(self, steps: Generator) -> Any:
        """Run a generator one step per turn (other work runs between steps); its return
        value is the answer."""
        fut = asyncio.get_running_loop().create_future()
        self._put(_Job(fut, steps=steps))
        return await fut

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
        if job.steps is not None:
            try:
                finished, value = await asyncio.to_thread(_step, job.steps)
            except Exception as e:
                _settle(job.fut, error=e)
                return
            if finished:
                _settle(job.fut, result=value)
            else:
                self._q.put_nowait(job)  # its next slice, after what is queued now
            return
        try:
            res = await asyncio.to_thread(job.fn)
        except Exception as e:
            _settle(job.fut, error=e)
            return
        _settle(job.fut, result=res)

    async def _run_events(self, batch: list[tuple[_Job, int]], n: int) -> None:
        events = [e for j, take in batch for e in j.events[j.done : j.done + take]]
        t0 = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.engine.apply, events)
        except Exception as e:  # engine failure: every request of the batch gets it
            for j, take in batch:
                self._release(take)
                j.done = len(j.events)
                _settle(j.fut, error=e)
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
