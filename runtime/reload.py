"""Hot reload: swap the serving cell while users stream, then carry every stored user over.

A reload (`POST /admin/reload {"onnx": PATH}` or SIGHUP) opens and checks the new cell in a
worker thread while the old one keeps serving (`Engine.open_cell`: metadata, graph, a test
step). A cell that fails is refused with one clear message and nothing changes. A sound one
is installed by `Engine.swap`, queued on the micro-batcher like any request: it runs between
two batches, so every batch runs on one cell and no request fails because of the switch.

Users are then carried over by replay, never by feeding an old state to the new cell: a
record made by another cell is rebuilt from its stored recent items (`Engine.migrate`),
lazily when the user's next event or read arrives, and by a background sweep over
`store.scan()` that migrates the rest a small slice at a time through the same batcher,
stepping aside while live events are waiting. The sweep also runs when the server starts
(`Reloader.boot`): a restart on another cell carries the stored users over the same way.
`pending` (and `/metrics`' `recblr_migration_pending_users`) is the number of stored users the
running sweep has not checked yet; it reads 0 only once every stored user has been checked and,
where another (older) cell made its record and it has a history, rebuilt. With
`--keep-history 0` there is nothing to replay: each user is reset on their next event, and
that answer says `"reset": "cell_changed"`.

The endpoint is for operators: loopback-only by default (`--admin-reload loopback`), `off`
refuses it, `any` accepts it from every address (put it behind your own access control).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from recblr.runtime import jsonio
from recblr.runtime.batcher import MicroBatcher
from recblr.runtime.engine import Engine
from recblr.runtime.errors import BadEvent, RuntimeUserError
from recblr.runtime.metrics import Metrics

ADMIN_MODES = ("off", "loopback", "any")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class CellRefused(RuntimeUserError):
    """The new cell failed its checks; the old one keeps serving."""

    status = 422
    code = "cell_refused"


class ReloadBusy(RuntimeUserError):
    status = 409
    code = "reload_in_progress"


class AdminForbidden(RuntimeUserError):
    status = 403
    code = "admin_forbidden"


class Reloader:
    """Owns cell changes of one server: the reload itself, the sweep, and their counters."""

    SWEEP_SLICE = 8  # users migrated per batcher turn (a turn replays their whole histories)
    SCAN_PAGE = 256  # users read per check of the sweep (outside the batcher)
    SWEEP_SHARE = 0.25  # the most of the engine's time the sweep takes while events flow

    def __init__(self, engine: Engine, batcher: MicroBatcher, metrics: Metrics, admin: str):
        if admin not in ADMIN_MODES:
            raise BadEvent(f"--admin-reload {admin!r}: use one of {', '.join(ADMIN_MODES)}")
        self.engine, self.batcher, self.metrics, self.admin = engine, batcher, metrics, admin
        self.path = Path(engine.info.path)
        self._busy = False
        self._sweep: asyncio.Task | None = None
        self.pending = 0  # stored users the current sweep has not checked yet
        self.swept = 0
        self.sweep_seconds = 0.0
        self.outcomes = {"done": 0, "refused": 0}
        for name, kind, text in (
            ("recblr_reloads_total", "counter", "cell reloads by outcome (done, refused)"),
            ("recblr_users_migrated_total", "counter", "users rebuilt for a new cell by replay"),
            (
                "recblr_migration_items_skipped_total",
                "counter",
                "replayed items unknown to the cell",
            ),
            (
                "recblr_migration_pending_users",
                "gauge",
                "stored users the migration sweep (at start, after a reload) has yet to check",
            ),
        ):
            metrics.describe(name, kind, text)

    # ----------------------------------------------------------------- access
    def check_access(self, scope) -> None:
        if self.admin == "off":
            raise AdminForbidden(
                "the reload endpoint is off (--admin-reload off); send SIGHUP to the server "
                "or restart it with --admin-reload loopback"
            )
        client = scope.get("client") or ("", 0)
        host = str(client[0])
        if self.admin == "loopback" and not (host in _LOOPBACK or host.startswith("127.")):
            raise AdminForbidden(
                f"/admin/reload answers loopback clients only, not {host or 'this client'} "
                "(--admin-reload any opens it to every address)"
            )

    @staticmethod
    def path_of(body: bytes) -> str | None:
        """The `onnx` path of a reload body; None (empty body or no `onnx`): the last path."""
        if not body.strip():
            return None
        obj = jsonio.parse_json(body)
        if not isinstance(obj, dict) or not isinstance(obj.get("onnx", ""), str):
            raise BadEvent('reload body must be {"onnx": "PATH"} (or empty: the last path)')
        return obj.get("onnx") or None

    # ----------------------------------------------------------------- the reload
    async def reload(self, path: str | None = None) -> dict:
        """Open and check the cell at `path` (default: the last one loaded), swap it in
        between two batches and start the sweep. Refused (CellRefused) when it fails."""
        if self._busy:
            raise ReloadBusy("a reload is already in progress; retry when it has answered")
        self._busy = True
        try:
            p = Path(path) if path else self.path
            engine = self.engine
            try:
                cell = await asyncio.to_thread(engine.open_cell, p)
            except RuntimeUserError as e:
                self.outcomes["refused"] += 1
                raise CellRefused(
                    f"cell refused, still serving {engine.info.short_hash}: {e}"
                ) from None
            old = await self.batcher.call(lambda: engine.swap(cell))
            self.path = p
            self.outcomes["done"] += 1
            replay = engine.keep_history > 0 and cell.info.state_key != old.state_key
            if replay:
                await self._start_sweep()
            return {
                "cell": cell.info.short_hash,
                "previous": old.short_hash,
                "items": cell.info.n_items,
                "k": cell.info.top_k,
                "states": (
                    "kept"
                    if cell.info.state_key == old.state_key
                    else "replayed"
                    if replay
                    else "reset on each user's next event"
                ),
                "pending": self.pending,
            }
        finally:
            self._busy = False

    def on_sighup(self) -> None:
        """SIGHUP: reload the last path; the outcome goes to stderr (there is no client)."""

        async def run() -> None:
            try:
                r = await self.reload(None)
                print(f"recblr-serve: SIGHUP reload: {jsonio.dumps(r).decode()}", file=sys.stderr)
            except RuntimeUserError as e:
                print(f"recblr-serve: SIGHUP reload: {e}", file=sys.stderr)

        asyncio.get_running_loop().create_task(run())

    # ----------------------------------------------------------------- the sweep
    async def boot(self) -> None:
        """At the server's start: sweep the store when it holds users, so records another
        cell made (a restart on a new cell) are carried over without waiting to be touched,
        and `pending` counts them until then."""
        try:
            if self.engine.keep_history > 0 and await asyncio.to_thread(self.engine.users_held):
                await self._start_sweep()
        except RuntimeUserError as e:  # the store is away: users migrate lazily meanwhile
            print(f"recblr-serve: migration sweep not started: {e}", file=sys.stderr)

    async def _start_sweep(self) -> None:
        await self.stop()
        self.pending = await asyncio.to_thread(self.engine.users_held)
        self.swept = 0
        self._sweep = asyncio.create_task(self._sweep_all())

    async def _sweep_all(self) -> None:
        """Check every stored user once: a scan page at a time, read outside the batcher;
        the records another cell made are migrated a slice per batcher turn. A slice queues
        behind the live events already waiting; while events are in flight, the sweep then
        waits long enough to take at most SWEEP_SHARE of the engine's time (when idle, it
        runs flat out)."""
        engine, store, batcher = self.engine, self.engine.store, self.batcher
        t0 = time.perf_counter()
        cursor: int | str = 0
        while True:
            try:
                cursor, users = await asyncio.to_thread(store.scan, cursor, self.SCAN_PAGE)
                stale = await asyncio.to_thread(engine.stale_users, users) if users else []
                for i in range(0, len(stale), self.SWEEP_SLICE):
                    part = stale[i : i + self.SWEEP_SLICE]
                    spent = await batcher.call(lambda u=part: _timed(engine.migrate, u))
                    self.swept += len(part)
                    if batcher.inflight:
                        await asyncio.sleep(spent * (1 - self.SWEEP_SHARE) / self.SWEEP_SHARE)
            except RuntimeUserError as e:  # e.g. the store went away: users migrate lazily
                print(f"recblr-serve: migration sweep stopped: {e}", file=sys.stderr)
                return
            self.pending = max(0, self.pending - len(users))
            if cursor == 0:
                break
        self.pending = 0
        self.sweep_seconds = time.perf_counter() - t0

    @property
    def sweeping(self) -> bool:
        return self._sweep is not None and not self._sweep.done()

    async def wait_sweep(self) -> None:
        if self._sweep is not None:
            await asyncio.shield(self._sweep)

    async def stop(self) -> None:
        """Cancel a running sweep (a later reload or the server's shutdown)."""
        if self._sweep is not None and not self._sweep.done():
            self._sweep.cancel()
            await asyncio.gather(self._sweep, return_exceptions=True)
        self._sweep = None

    # ----------------------------------------------------------------- /metrics
    def export(self) -> None:
        m, s = self.metrics, self.engine.stats
        for outcome, v in self.outcomes.items():
            m.set("recblr_reloads_total", v, outcome=outcome)
        m.set("recblr_users_migrated_total", s.users_migrated)
        m.set("recblr_migration_items_skipped_total", s.migration_items_skipped)
        m.set("recblr_migration_pending_users", self.pending)


def _timed(fn, *args) -> float:
    """Seconds `fn(*args)` took (in the batcher's worker thread, excluding its queue wait)."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0
