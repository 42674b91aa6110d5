"""HTTP/JSON server: one raw ASGI app over one Engine and one MicroBatcher.

POST   /v1/events                       one event {"user","item"[,"seq"]} or {"events":[...]}
GET    /v1/users/{user}/recommendations?k=
GET    /v1/users/{user}/history         the stored record: recent items, n, seq
PUT    /v1/users/{user}/history         {"items":[...][,"seq"]}
DELETE /v1/users/{user}
POST   /v1/stream                       NDJSON events in, one NDJSON line out per event line
GET    /healthz, /metrics (Prometheus text), /openapi.json (this API, OpenAPI 3)
POST   /admin/reload                    {"onnx": PATH}: swap the cell live (runtime/reload.py)

`{user}` is percent-encoded in the path (`acme%2Falice` is the user `acme/alice`): every id an
event can carry can be read, reset and deleted. An error is JSON, {"error": message, "code"},
with the error's status (RuntimeUserError.status). A request is applied only when its body
arrived complete; a body that stops arriving is answered 408 after `body_timeout_s`.

Bounded: at most `max_requests` requests are in progress at once (reading, queued, running or
answering; /v1/stream counts as one), the next is answered 503 `overloaded` before its body is
read; the batcher holds at most `max_inflight` events (a PUT counts as its history's length).
At shutdown a request still reading its body is answered 503 `shutting_down` at once (nothing
of it is applied) instead of holding the drain until its timeout, and a request the server's
shutdown timeout cancels is answered the same way, without a traceback in the log.

Multi-event POSTs: each event stands alone. The answer lists one result per event, in order;
an event the engine could not apply has {"user", "error", "code"} in its place and the answer's
status is 207 (partly applied) instead of 200; the other events are applied. That includes a
request cut into slices whose later slice met an engine failure (a store error): its events
from that slice on are answered `not_applied` (see runtime/batcher.py). Events that fail
validation (bad fields, an unknown item under the "error" policy) refuse the whole request
(4xx) before anything is applied; an engine failure before any of its events was applied
fails the whole request with that error (nothing applied).

No framework: routing is one table (`App.routes()` lists it for the OpenAPI test), and the
raw ASGI keeps one body reader, one way of answering (`App._error` for errors) and one place
that records request metrics (`App._request`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

from recblr.runtime import jsonio
from recblr.runtime.batcher import MicroBatcher
from recblr.runtime.engine import Engine
from recblr.runtime.errors import (
    BadEvent,
    BodyTimeout,
    ClientGone,
    RuntimeUserError,
    TooLarge,
)
from recblr.runtime.jsonio import Event, check_user, parse_event, parse_json, parse_seq
from recblr.runtime.metrics import BATCH_BUCKETS, Metrics
from recblr.runtime.reload import Reloader


@dataclass
class ServerSettings:
    max_batch: int = 256
    max_wait_ms: float = 2.0
    max_body_bytes: int = 1 << 20  # per request body, and per NDJSON line on /v1/stream
    max_history: int = 10_000
    max_events_per_request: int = 10_000
    # a body (or a stream's next chunk) must arrive within this; shorter than the shutdown
    # timeout, so a slow body is cut by its own clock before a drain would cancel it
    body_timeout_s: float = 5.0
    stream_window: int = 256  # answers one /v1/stream connection may have pending
    max_inflight: int = 65_536  # events queued or running, over all connections
    max_requests: int = 1024  # requests in progress at once; the next is answered 503
    admin_reload: str = "loopback"  # who may POST /admin/reload: off, loopback or any


_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")

# The scope key under which a request leaves "cut me off now" for the HTTP protocol's graceful
# shutdown (runtime/httpproto.py calls it on every connection still in a request).
SHUTDOWN_HOOK = "recblr.shutdown"


class ShuttingDown(RuntimeUserError, status=503, code="shutting_down"):
    """The server is stopping: this request was cut off (its message says what was applied)."""


class Overloaded(RuntimeUserError, status=503, code="overloaded"):
    """More requests are in progress than `max_requests`: retry shortly."""


class MethodNotAllowed(RuntimeUserError, status=405, code="http_405"):
    """A route asked with a method it does not answer; `allow` lists the ones it does."""

    def __init__(self, allowed: list[str]):
        super().__init__(f"Method Not Allowed (use {', '.join(allowed)})")
        self.allow = ", ".join(allowed).encode()


async def _answer(
    send, status: int, body: bytes, ctype=_JSON, close: bool = False, extra=()
) -> None:
    headers = [(b"content-length", str(len(body)).encode()), ctype, *extra]
    if close:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(scope, receive, limit: int) -> bytes:
    """The one request-body reader: the whole body, or an error. TooLarge past `limit` bytes
    (from Content-Length before reading when it is declared), ClientGone when the client
    disconnects before the end (an incomplete body is never applied). The time a body may
    take is watched from outside (`App._watchdog`): no timer per request."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise TooLarge(f"request body is {value.decode()} bytes; the limit is {limit}")
            break
    chunks, n = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        n += len(chunk)
        if n > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _result(r, k: int) -> dict:
    """One event's answer: its recommendations, or its error (for multi-event answers)."""
    if isinstance(r, RuntimeUserError):
        return {"user": _user_of(r), "error": str(r), "code": r.code}
    if isinstance(r, Exception):
        raise r
    d = r.to_json()
    d["items"], d["scores"] = d["items"][:k], d["scores"][:k]
    return d


def _user_of(e: Exception) -> str | None:
    return getattr(e, "user", None)


class _Routes:
    EVENTS = "/v1/events"
    STREAM = "/v1/stream"
    USERS = b"/v1/users/"


class App:
    """The ASGI application (`create_app(engine)`)."""

    def __init__(self, engine: Engine, settings: ServerSettings | None = None):
        self.engine = engine
        self.settings = s = settings or ServerSettings()
        self.metrics = m = Metrics()
        m.describe("recblr_requests_total", "counter", "HTTP requests by endpoint and status")
        m.describe("recblr_errors_total", "counter", "answers with an error, by code")
        m.describe("recblr_request_latency_seconds", "histogram", "request latency by endpoint")
        m.describe("recblr_batch_size", "histogram", "events per ORT batch", BATCH_BUCKETS)
        m.describe("recblr_batch_seconds", "histogram", "engine time per batch")
        m.describe("recblr_users_held", "gauge", "users with a stored state")
        m.describe("recblr_events_total", "counter", "events by outcome")
        m.describe(
            "recblr_stale_states_reset_total",
            "counter",
            "users whose stored state, made by another cell, was reset",
        )
        m.describe("recblr_commit_conflicts_total", "counter", "compare-and-set retries")
        m.describe("recblr_inflight_events", "gauge", "events queued or running")
        # requests reading their body: token -> (start time, task); the watchdog (and the
        # shutdown) cancel them and leave in _cut_off the error each is to answer
        self._reading: dict[int, tuple[float, asyncio.Task | None]] = {}
        self._cut_off: dict[int, RuntimeUserError] = {}
        self._active = 0  # requests in progress (bounded by max_requests)
        self._next_reader = 0
        self._watch: asyncio.Task | None = None
        self.batcher = MicroBatcher(
            engine,
            s.max_batch,
            s.max_wait_ms,
            on_batch=self._on_batch,
            more_coming=self._more_coming,
            max_inflight=s.max_inflight,
        )
        self.reloader = Reloader(engine, self.batcher, m, s.admin_reload)
        self.ready = False
        # the routes: path -> (metric name, {method: handler}); under /v1/users/{user}, the
        # path's rest -> the same, each handler taking the user first
        self._fixed = {
            _Routes.EVENTS: ("events", {"POST": self.events}),
            _Routes.STREAM: ("stream", {"POST": self.stream}),  # answered before routing
            "/healthz": ("healthz", {"GET": self.healthz}),
            "/metrics": ("metrics", {"GET": self.metrics_text}),
            "/openapi.json": ("openapi", {"GET": self.openapi}),
            "/admin/reload": ("reload", {"POST": self.reload}),
        }
        self._per_user = {
            (): ("delete", {"DELETE": self.delete_user}),
            (b"recommendations",): ("recommendations", {"GET": self.recommendations}),
            (b"history",): ("history", {"GET": self.get_history, "PUT": self.put_history}),
        }

    def routes(self) -> dict[str, list[str]]:
        """Every route this app answers, as OpenAPI path templates -> methods."""
        out = {path: sorted(h) for path, (_, h) in self._fixed.items()}
        users = _Routes.USERS.decode() + "{user}"
        for rest, (_, h) in self._per_user.items():
            out["/".join([users, *(r.decode() for r in rest)])] = sorted(h)
        return out

    # ----------------------------------------------------------------- plumbing
    def _on_batch(self, n: int, seconds: float) -> None:
        self.metrics.observe("recblr_batch_size", n)
        self.metrics.observe("recblr_batch_seconds", seconds)

    def _more_coming(self) -> bool:
        """Whether a request started reading its body within the last `max_wait_ms`: one that
        has been reading for longer (a slow or stalled body) is not about to be queued, and a
        batch must not wait for it."""
        if not self._reading:
            return False
        horizon = time.perf_counter() - self.batcher.max_wait
        return any(t > horizon for t, _ in self._reading.values())

    async def _body(self, scope, receive) -> bytes:
        token = self._next_reader = self._next_reader + 1
        task = asyncio.current_task()
        self._reading[token] = (time.perf_counter(), task)
        scope[SHUTDOWN_HOOK] = lambda: self._cut(token, _shutdown_error())
        try:
            return await read_body(scope, receive, self.settings.max_body_bytes)
        except asyncio.CancelledError:
            err = self._cut_off.get(token)
            if err is None:
                raise
            if hasattr(task, "uncancel"):  # Python 3.11+: the cancel was ours, not a shutdown's
                task.uncancel()
            raise err from None
        finally:
            del self._reading[token]
            self._cut_off.pop(token, None)

    def _cut(self, token: int, err: RuntimeUserError) -> None:
        """Stop a body read in progress (a no-op once it is over): it answers `err`."""
        entry = self._reading.get(token)
        if entry is None or token in self._cut_off or entry[1] is None:
            return
        self._cut_off[token] = err
        entry[1].cancel()

    async def _watchdog(self) -> None:
        """Cut off bodies that take longer than body_timeout_s: one sleeping task for the
        whole server instead of a timer per request (the hot path stays timer-free)."""
        limit = self.settings.body_timeout_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.perf_counter()
            for token, (t0, _) in list(self._reading.items()):
                if now - t0 > limit:
                    err = BodyTimeout(
                        f"the request body did not arrive within {limit:g} s; nothing was applied"
                    )
                    self._cut(token, err)

    def _k(self, scope) -> int:
        qs = scope.get("query_string", b"")
        if not qs:
            return self.engine.top_k
        raw = dict(parse_qsl(qs.decode("latin-1"))).get("k")
        if raw is None:
            return self.engine.top_k
        try:
            k = int(raw)
        except ValueError:
            raise BadEvent(f"k must be an integer in 1..{self.engine.top_k}") from None
        return self.engine.check_k(k)

    async def _lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await self.batcher.start()
                self._watch = asyncio.create_task(self._watchdog())
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                self.ready = False
                if self._watch is not None:
                    self._watch.cancel()
                await self.reloader.stop()
                await self.batcher.stop()  # drain queued events, then close the store
                self.engine.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----------------------------------------------------------------- the one dispatcher
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self._active >= self.settings.max_requests:
            await self._error(send, Overloaded(
                f"{self._active} requests in progress (the limit is "
                f"{self.settings.max_requests}); nothing was applied: retry shortly"
            ))  # fmt: skip
            self.metrics.request_done("overloaded", 503, 0.0)
            return
        self._active += 1
        try:
            if scope["path"] == _Routes.STREAM and scope["method"] == "POST":
                await self.stream(scope, receive, send)
            else:
                await self._request(scope, receive, send)
        except asyncio.CancelledError:
            # the server's shutdown timeout cancelled this request (nothing else cancels one):
            # answered here, quietly, instead of a traceback in the log
            pass
        finally:
            self._active -= 1

    async def _request(self, scope, receive, send) -> None:
        t0 = time.perf_counter()
        name, status = "other", 500
        answered = False
        try:
            name, handler = self._route(scope)
            status, payload = await handler(scope, receive)
            body = payload if isinstance(payload, bytes) else jsonio.dumps(payload)
            ctype = _TEXT if name == "metrics" else _JSON
            answered = True
            await _answer(send, status, body, ctype)
        except RuntimeUserError as e:
            status = e.status
            answered = True
            await self._error(send, e)
        except ClientGone:
            status = 499  # nothing to answer: the client left before its body was complete
        except asyncio.CancelledError:
            status = 503
            if not answered:
                err = ShuttingDown(
                    "the server is shutting down and stopped this request before its answer; "
                    "its events may have been applied: retry it with its seq"
                )
                await self._error(send, err)
            raise
        except Exception:
            await _answer(send, 500, b"Internal Server Error", _TEXT_PLAIN, close=True)
            raise  # the server logs it
        finally:
            self.metrics.request_done(name, status, time.perf_counter() - t0)

    async def _error(self, send, e: RuntimeUserError) -> None:
        """The one way an error is answered: JSON {"error", "code"} with its status."""
        self.metrics.inc("recblr_errors_total", code=e.code)
        body = jsonio.dumps({"error": str(e), "code": e.code})
        close = isinstance(e, (BodyTimeout, TooLarge, ShuttingDown, Overloaded))
        extra = [(b"allow", e.allow)] if isinstance(e, MethodNotAllowed) else []
        if isinstance(e, Overloaded):
            extra = [(b"retry-after", b"1")]
        await _answer(send, e.status, body, close=close, extra=extra)

    def _route(self, scope):
        path, method = scope["path"], scope["method"]
        route = self._fixed.get(path)
        if route is not None:
            return route[0], self._allow(method, route[1])
        raw = scope.get("raw_path") or path.encode()
        if raw.startswith(_Routes.USERS):
            user, *rest = raw[len(_Routes.USERS) :].split(b"/")
            route = self._per_user.get(tuple(rest))
            if route is not None:
                user = _path_user(user)
                return route[0], self._with(self._allow(method, route[1]), user)
        raise RuntimeUserError("Not Found", status=404, code="http_404")

    @staticmethod
    def _allow(method: str, handlers: dict):
        h = handlers.get(method)
        if h is None:
            raise MethodNotAllowed(list(handlers))
        return h

    @staticmethod
    def _with(fn, user: str):
        async def bound(scope, receive):
            return await fn(user, scope, receive)

        return bound

    # ----------------------------------------------------------------- endpoints
    async def events(self, scope, receive):
        engine = self.engine
        k = self._k(scope)
        body = parse_json(await self._body(scope, receive))
        if isinstance(body, dict) and "events" in body:
            evs = self._events_of(body["events"])
            if not evs:
                return 200, {"results": [], "failed": 0}
            res = await self.batcher.submit(evs)
            out = [_result(_tag(r, e), k) for r, e in zip(res, evs, strict=True)]
            failed = sum(1 for o in out if "error" in o)
            return (207 if failed else 200), {"results": out, "failed": failed}
        ev = parse_event(body, engine)
        (r,) = await self.batcher.submit([ev])
        if isinstance(r, Exception):
            raise r
        return 200, _result(r, k)

    def _events_of(self, raw) -> list[Event]:
        if not isinstance(raw, list):
            raise BadEvent("'events' must be a list of events")
        limit = self.settings.max_events_per_request
        if len(raw) > limit:
            raise TooLarge(f"{len(raw)} events in one request; the limit is {limit}")
        evs = []
        for i, o in enumerate(raw):
            try:
                evs.append(parse_event(o, self.engine))
            except RuntimeUserError as e:
                raise type(e)(f"events[{i}]: {e}", status=e.status, code=e.code) from None
        return evs

    async def recommendations(self, user: str, scope, receive):
        k = self._k(scope)
        r = await asyncio.to_thread(self.engine.recommend, user, k)
        return 200, r.to_json()

    async def get_history(self, user: str, scope, receive):
        st = await asyncio.to_thread(self.engine.history, user)
        current = st.cell == self.engine.state_key
        return 200, {"user": user, "items": st.recent, "n": st.n, "seq": st.seq, "current": current}

    async def put_history(self, user: str, scope, receive):
        k = self._k(scope)
        body = parse_json(await self._body(scope, receive))
        if isinstance(body, list):
            body = {"items": body}
        if not isinstance(body, dict) or "items" not in body:
            raise BadEvent('history body must be {"items": [...]} (oldest first)')
        items = body["items"]
        if not isinstance(items, list):
            raise BadEvent("'items' must be a list of item ids")
        if len(items) > self.settings.max_history:
            raise BadEvent(
                f"history has {len(items)} items; the limit is {self.settings.max_history}"
            )
        seq = parse_seq(body.get("seq"))
        self.engine.encode(items)  # validate before queueing (raises UnknownItem per policy)
        steps = self.engine.reset_steps(user, items, seq=seq, k=k)
        r = await self.batcher.call_steps(steps, weight=max(1, len(items)))
        return 200, r.to_json()

    async def delete_user(self, user: str, scope, receive):
        gone = await self.batcher.call(lambda: self.engine.forget(user), weight=1)
        return 200, {"user": user, "deleted": gone}

    async def reload(self, scope, receive):
        self.reloader.check_access(scope)
        path = self.reloader.path_of(await self._body(scope, receive))
        return 200, await self.reloader.reload(path)

    async def healthz(self, scope, receive):
        info = self.engine.info
        return 200, {
            "status": "ok" if self.ready else "starting",
            "cell": info.short_hash,
            "items": info.n_items,
            "k": info.top_k,
            "state_size": info.state_size,
            "providers": self.engine.providers,
            "store": getattr(self.engine.store, "kind", type(self.engine.store).__name__),
        }

    async def metrics_text(self, scope, receive):
        m, s = self.metrics, self.engine.stats
        m.set("recblr_users_held", self.engine.users_held())
        m.set("recblr_inflight_events", self.batcher.inflight)
        m.set("recblr_stale_states_reset_total", s.stale_states_reset)
        m.set("recblr_commit_conflicts_total", s.commit_conflicts)
        for outcome, v in (
            ("applied", s.events_applied),
            ("duplicate", s.events_duplicate),
            ("skipped", s.events_skipped),
            ("failed", s.events_failed),
        ):
            m.set("recblr_events_total", v, outcome=outcome)
        self.reloader.export()
        return 200, m.render().encode()

    async def openapi(self, scope, receive):
        from recblr.runtime.openapi import document

        return 200, document(self.engine.info, self.settings)

    # ----------------------------------------------------------------- /v1/stream
    async def stream(self, scope, receive, send) -> None:
        """NDJSON in, one line out per event line, in order, while the body is still arriving.

        Bounded end to end: at most `stream_window` answers wait to be written; when the client
        does not read them, `send` waits, the window fills, and this connection stops reading
        its body (the socket's flow control then holds the sender). Lines are split in linear
        time, a chunk at a time. Only complete lines are applied: when the client disconnects,
        a last line without its newline is dropped; when the body ends normally, it counts.
        At shutdown the reading stops: the lines read so far are applied and answered, then one
        `shutting_down` line says from which line on nothing was applied.
        """
        t0 = time.perf_counter()
        s = self.settings
        k = self.engine.top_k
        window: asyncio.Queue = asyncio.Queue(maxsize=max(1, s.stream_window))
        lines = jsonio.LineSplitter(s.max_body_bytes)

        answered = 0  # the last line whose answer is in the window
        queued = None  # a line submitted to the batcher, its answer not yet in the window

        async def one(lineno: int, line) -> None:
            nonlocal answered, queued
            try:
                if isinstance(line, RuntimeUserError):
                    raise line
                ev = parse_event(parse_json(line), self.engine)
            except RuntimeUserError as e:
                self.metrics.inc("recblr_errors_total", code=e.code)
                await window.put({"line": lineno, "error": str(e), "code": e.code})
                answered = lineno
                return
            await self.batcher.admit(1)
            queued = (lineno, self.batcher.submit_nowait([ev]))
            await window.put(queued)
            queued, answered = None, lineno

        async def reader() -> None:
            nonlocal reading
            try:
                await read_lines()
            except asyncio.CancelledError:
                if cancelled or not shutting:
                    raise
                if hasattr(task, "uncancel"):  # Python 3.11+; our own cut, not the writer's end
                    task.uncancel()
                last = answered if queued is None else queued[0]
                if queued is not None:  # submitted: it is applied, so it is answered
                    await window.put(queued)
                e = ShuttingDown(
                    f"the server is shutting down; lines after {last} were not applied"
                )
                await window.put({"line": last + 1, "error": str(e), "code": e.code})
            finally:
                reading = False  # from here on a shutdown has nothing to cut
                if not cancelled:  # the writer waits for this; a cancelled reader has no writer
                    await window.put(None)

        async def read_lines() -> None:
            while True:
                try:
                    msg = await asyncio.wait_for(receive(), s.body_timeout_s)
                except asyncio.TimeoutError:
                    e = BodyTimeout(
                        f"no data for {s.body_timeout_s:g} s; lines after "
                        f"{lines.lineno} were not applied"
                    )
                    await window.put({"line": lines.lineno + 1, "error": str(e), "code": e.code})
                    break
                if msg["type"] == "http.disconnect":
                    break  # a partial last line is dropped
                for lineno, line in lines.feed(msg.get("body", b"")):
                    await one(lineno, line)
                if not msg.get("more_body", False):
                    for lineno, line in lines.finish():
                        await one(lineno, line)
                    break

        def shut() -> None:
            nonlocal shutting
            if reading and not shutting:
                shutting = True
                task.cancel()

        cancelled = shutting = False
        reading = True
        task = asyncio.create_task(reader())
        scope[SHUTDOWN_HOOK] = shut
        headers = [(b"content-type", b"application/x-ndjson")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while (item := await window.get()) is not None:
                if isinstance(item, tuple):
                    lineno, fut = item
                    (r,) = await fut
                    obj = _result(r, k)
                    if "error" in obj:
                        obj["line"] = lineno
                else:
                    obj = item
                body = jsonio.dumps(obj) + b"\n"
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if not task.done():
                cancelled = True
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.metrics.request_done("stream", 200, time.perf_counter() - t0)


_TEXT = (b"content-type", b"text/plain; version=0.0.4")
_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")


def _path_user(seg: bytes) -> str:
    """A user id from its percent-encoded path segment."""
    try:
        user = unquote_to_bytes(seg).decode("utf-8")
    except UnicodeDecodeError:
        raise BadEvent("the user id in the path is not percent-encoded UTF-8") from None
    return check_user(user)


def _shutdown_error() -> ShuttingDown:
    return ShuttingDown(
        "the server is shutting down; this request's body was not complete and nothing of it "
        "was applied: retry it"
    )


def _tag(r, e: Event):
    """Name the event's user on its error (multi-event answers say whose event failed)."""
    if isinstance(r, RuntimeUserError) and not hasattr(r, "user"):
        r.user = e.user
    return r


def create_app(engine: Engine, settings: ServerSettings | None = None) -> App:
    """The ASGI app for an engine."""
    return App(engine, settings)
