"""Micro-batching: gather concurrent requests into one engine call.

Requests are queued in arrival order. The worker takes the first one, then keeps taking more
until `max_batch` events are gathered or `max_wait_ms` has passed since the first (it waits
only while other requests are still being read: a lone request runs at once), and runs them
as one `Engine.apply` (in a worker thread, so the event loop keeps accepting). The engine splits
repeated users into waves, so two events of one user are applied in arrival order. Other
operations (history reset, forget) go through the same queue and run alone, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from recblr.runtime.engine import Engine, Event


class _Job:
    __slots__ = ("events", "fn", "fut")

    def __init__(self, events=None, fn=None, fut=None):
        self.events = events
        self.fn = fn
        self.fut = fut


class MicroBatcher:
    def __init__(
        self,
        engine: Engine,
        max_batch: int = 256,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
        more_coming: Callable[[], int] | None = None,
    ):
        self.engine = engine
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.on_batch = on_batch
        # how many requests are being read right now (not yet queued): a batch only waits for
        # more while some are, so a lone client never pays max_wait_ms.
        self.more_coming = more_coming
        self._q: asyncio.Queue[_Job | None] | None = None
        self._task: asyncio.Task | None = None
        self._held: _Job | None = None
        self._wake: asyncio.Future | None = None  # set while the worker waits to fill a batch
        self.inflight = 0

    def _put(self, job: _Job | None) -> None:
        self._q.put_nowait(job)
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    async def start(self) -> None:
        self._q = asyncio.Queue()
        self._task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        """Finish everything queued, then stop."""
        if self._task is None:
            return
        self._put(None)
        await self._task
        self._task = None

    def submit_nowait(self, events: list[Event]) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.inflight += len(events)
        self._put(_Job(events=events, fut=fut))
        return fut

    async def submit(self, events: list[Event]) -> list:
        return await self.submit_nowait(events)

    async def call(self, fn: Callable[[], Any]) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._put(_Job(fn=fn, fut=fut))
        return await fut

    async def _next(self, timeout: float | None) -> _Job | None | bool:
        if self._held is not None:
            j, self._held = self._held, None
            return j
        if timeout is None:
            return await self._q.get()
        if not self._q.empty():
            return self._q.get_nowait()
        if timeout <= 0:
            return False
        try:
            return await asyncio.wait_for(self._q.get(), timeout)
        except asyncio.TimeoutError:
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
            if first.fn is not None:
                await self._run_call(first)
                continue
            jobs = [first]
            n = len(first.events)
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                if self._held is None and self._q.empty():
                    idle = self.more_coming is not None and self.more_coming() == 0
                    if idle or loop.time() >= deadline:
                        break
                    await self._fill_wait(deadline)
                    continue
                j = await self._next(0)
                if j is None:
                    stopping = True
                    break
                if j.fn is not None or n + len(j.events) > self.max_batch:
                    self._held = j
                    break
                jobs.append(j)
                n += len(j.events)
            await self._run_events(jobs, n)
        # drain whatever was queued before stop
        while self._held is not None or (self._q is not None and not self._q.empty()):
            j = await self._next(0)
            if j is None or j is False:
                continue
            if j.fn is not None:
                await self._run_call(j)
            else:
                await self._run_events([j], len(j.events))

    async def _run_call(self, job: _Job) -> None:
        try:
            res = await asyncio.to_thread(job.fn)
        except Exception as e:
            if not job.fut.done():
                job.fut.set_exception(e)
            return
        if not job.fut.done():
            job.fut.set_result(res)

    async def _run_events(self, jobs: list[_Job], n: int) -> None:
        events = [e for j in jobs for e in j.events]
        t0 = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.engine.apply, events)
        except Exception as e:  # engine failure: every request of the batch gets it
            for j in jobs:
                self.inflight -= len(j.events)
                if not j.fut.done():
                    j.fut.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(n, time.perf_counter() - t0)
        i = 0
        for j in jobs:
            part = results[i : i + len(j.events)]
            i += len(j.events)
            self.inflight -= len(j.events)
            if not j.fut.done():
                j.fut.set_result(part)
