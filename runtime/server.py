"""HTTP/JSON server (Starlette ASGI app) over one Engine and one MicroBatcher.

POST   /v1/events                       one event {"user","item"[,"seq"]} or {"events":[...]}
GET    /v1/users/{user}/recommendations?k=
PUT    /v1/users/{user}/history         {"items":[...][,"seq"]}
DELETE /v1/users/{user}
POST   /v1/stream                       NDJSON events in, one NDJSON line out per event
GET    /healthz
GET    /metrics                         Prometheus text
A request's error is JSON, {"error": message, "code": short_code}, with the error's status:
400 malformed JSON, 404 unknown user or path, 405 method, 413 too large, 422 invalid content
or unknown item (RuntimeUserError.status; a CellError would be 500). An unexpected exception
is a plain-text 500. On /v1/stream an error is a line {"line", "error", "code"} in the 200
response.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from recblr.runtime import jsonio
from recblr.runtime.batcher import MicroBatcher
from recblr.runtime.engine import Engine, Event, check_item, check_user
from recblr.runtime.errors import BadEvent, RuntimeUserError, TooLarge, UnknownItem
from recblr.runtime.metrics import BATCH_BUCKETS, Metrics


@dataclass
class ServerSettings:
    max_batch: int = 256
    max_wait_ms: float = 2.0
    max_body_bytes: int = 1 << 20  # per request body, and per NDJSON line on /v1/stream
    max_history: int = 10_000
    max_events_per_request: int = 10_000


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSON response, rendered by the runtime's one codec (as the hot path is)."""

    def render(self, content) -> bytes:
        return jsonio.dumps(content)


def _err(e: RuntimeUserError) -> JSONResponse:
    return JSONResponse({"error": str(e), "code": e.code}, status_code=e.status)


def parse_json(raw: bytes):
    try:
        return jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RuntimeUserError(f"malformed JSON: {e}", status=400, code="malformed_json") from None


MAX_SEQ = 2**63 - 1  # what the state store's INTEGER column holds


def parse_seq(v) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEQ:
        raise BadEvent(f"'seq' must be an integer in 0..{MAX_SEQ}")
    return v


def parse_event(obj, engine: Engine) -> Event:
    if not isinstance(obj, dict):
        raise BadEvent("an event must be a JSON object with 'user' and 'item'")
    missing = [f for f in ("user", "item") if f not in obj]
    if missing:
        raise BadEvent(f"event is missing field(s): {', '.join(missing)}")
    ev = Event(check_user(obj["user"]), check_item(obj["item"]), parse_seq(obj.get("seq")))
    if engine.unknown_items == "error" and engine.item_index(ev.item) is None:
        raise UnknownItem(f"unknown item {ev.item!r}: not in the cell's vocabulary")
    return ev


def parse_k(request: Request, engine: Engine) -> int:
    raw = request.query_params.get("k")
    if raw is None:
        return engine.top_k
    return _parse_k(raw, engine)


def _parse_k(raw: str, engine: Engine) -> int:
    try:
        k = int(raw)
    except ValueError:
        raise BadEvent(f"k must be an integer in 1..{engine.top_k}") from None
    return engine.check_k(k)


async def read_body(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise TooLarge(f"request body is {cl} bytes; the limit is {limit}")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _out(r, k: int) -> dict:
    if isinstance(r, Exception):
        raise r
    d = r.to_json()
    d["items"], d["scores"] = d["items"][:k], d["scores"][:k]
    return d


def events_of(body, app: App) -> list[Event] | None:
    """The events of a `{"events": [...]}` body, checked; None when the body is one event."""
    if not (isinstance(body, dict) and "events" in body):
        return None
    raw = body["events"]
    if not isinstance(raw, list):
        raise BadEvent("'events' must be a list of events")
    if len(raw) > app.settings.max_events_per_request:
        raise TooLarge(
            f"{len(raw)} events in one request; the limit is {app.settings.max_events_per_request}"
        )
    evs = []
    for i, o in enumerate(raw):
        try:
            evs.append(parse_event(o, app.engine))
        except RuntimeUserError as e:
            raise type(e)(f"events[{i}]: {e}", status=e.status, code=e.code) from None
    return evs


async def _served_by_front(request: Request) -> Response:  # pragma: no cover - never routed
    raise RuntimeError("POST /v1/events is answered by FastEvents")


class App:
    def __init__(self, engine: Engine, settings: ServerSettings | None = None):
        self.engine = engine
        self.settings = settings or ServerSettings()
        self.metrics = m = Metrics()
        m.describe("recblr_requests_total", "counter", "HTTP requests by endpoint and status")
        m.describe("recblr_errors_total", "counter", "requests answered with an error, by code")
        m.describe("recblr_request_latency_seconds", "histogram", "request latency by endpoint")
        m.describe("recblr_batch_size", "histogram", "events per ORT batch", BATCH_BUCKETS)
        m.describe("recblr_batch_seconds", "histogram", "engine time per batch")
        m.describe("recblr_users_held", "gauge", "users with a stored state")
        m.describe("recblr_events_total", "counter", "events by outcome")
        m.describe(
            "recblr_stale_states_reset_total",
            "counter",
            "stored states made by another cell, reset instead of used",
        )
        m.describe("recblr_inflight_events", "gauge", "events queued or running")
        self.batcher = MicroBatcher(
            engine,
            self.settings.max_batch,
            self.settings.max_wait_ms,
            on_batch=self._on_batch,
            more_coming=lambda: self.reading,
        )
        self.reading = 0  # /v1/events requests between arrival and queueing (FastEvents)
        self.ready = False
        routes = [
            # answered by FastEvents; listed so that another method gets 405, not 404
            Route("/v1/events", _served_by_front, methods=["POST"]),
            Route("/v1/users/{user}/recommendations", self.recommendations, methods=["GET"]),
            Route("/v1/users/{user}/history", self.history, methods=["PUT"]),
            Route("/v1/users/{user}", self.delete_user, methods=["DELETE"]),
            Route("/v1/stream", StreamEndpoint(self), methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
        ]
        self.asgi = Starlette(
            routes=routes,
            lifespan=self.lifespan,
            exception_handlers={HTTPException: self._http_exc},
        )

    async def _http_exc(self, request, exc: HTTPException):
        self.metrics.inc("recblr_errors_total", code=f"http_{exc.status_code}")
        return JSONResponse(
            {"error": exc.detail, "code": f"http_{exc.status_code}"}, status_code=exc.status_code
        )

    def _on_batch(self, n: int, seconds: float) -> None:
        self.metrics.observe("recblr_batch_size", n)
        self.metrics.observe("recblr_batch_seconds", seconds)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        await self.batcher.start()
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            await self.batcher.stop()  # drain queued events, then flush the store
            self.engine.close()

    async def _timed(self, name: str, fn, request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            resp = await fn(request)
        except RuntimeUserError as e:
            self.metrics.inc("recblr_errors_total", code=e.code)
            resp = _err(e)
        self.metrics.inc("recblr_requests_total", endpoint=name, status=str(resp.status_code))
        self.metrics.observe(
            "recblr_request_latency_seconds", time.perf_counter() - t0, endpoint=name
        )
        return resp

    # ----------------------------------------------------------------- endpoints
    # POST /v1/events is served by FastEvents (below), in front of this Starlette app.
    async def recommendations(self, request: Request) -> Response:
        async def run(request):
            user = check_user(request.path_params["user"])
            k = parse_k(request, self.engine)
            r = await asyncio.to_thread(self.engine.recommend, user, k)
            return JSONResponse(r.to_json())

        return await self._timed("recommendations", run, request)

    async def history(self, request: Request) -> Response:
        async def run(request):
            user = check_user(request.path_params["user"])
            k = parse_k(request, self.engine)
            body = parse_json(await read_body(request, self.settings.max_body_bytes))
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
            r = await self.batcher.call(lambda: self.engine.reset(user, items, seq=seq, k=k))
            return JSONResponse(r.to_json())

        return await self._timed("history", run, request)

    async def delete_user(self, request: Request) -> Response:
        async def run(request):
            user = check_user(request.path_params["user"])
            gone = await self.batcher.call(lambda: self.engine.forget(user))
            return JSONResponse({"user": user, "deleted": gone})

        return await self._timed("delete", run, request)

    async def healthz(self, request: Request) -> Response:
        info = self.engine.info
        return JSONResponse(
            {
                "status": "ok" if self.ready else "starting",
                "cell": info.short_hash,
                "items": info.n_items,
                "k": info.top_k,
                "state_size": info.state_size,
                "providers": self.engine.providers,
                "store": getattr(self.engine.store, "kind", type(self.engine.store).__name__),
            }
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        m, s = self.metrics, self.engine.stats
        m.set("recblr_users_held", self.engine.users_held())
        m.set("recblr_inflight_events", self.batcher.inflight)
        m.set("recblr_stale_states_reset_total", s.stale_states_reset)
        m.set("recblr_events_total", s.events_applied, outcome="applied")
        m.set("recblr_events_total", s.events_duplicate, outcome="duplicate")
        m.set("recblr_events_total", s.events_skipped, outcome="skipped")
        return PlainTextResponse(m.render(), media_type="text/plain; version=0.0.4")


class StreamEndpoint:
    """Raw ASGI endpoint: reads NDJSON while writing results (one line per input line).

    Implemented without StreamingResponse because that one consumes `receive` to watch for a
    disconnect, which would race with reading the request body.
    """

    def __init__(self, app: App):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        app = self.app
        limit = app.settings.max_body_bytes
        q: asyncio.Queue = asyncio.Queue()
        k = app.engine.top_k
        t0 = time.perf_counter()

        def handle(line: bytes, lineno: int) -> None:
            if not line.strip():
                return
            try:
                ev = parse_event(parse_json(line), app.engine)
            except RuntimeUserError as e:
                app.metrics.inc("recblr_errors_total", code=e.code)
                q.put_nowait(("err", {"line": lineno, "error": str(e), "code": e.code}))
                return
            q.put_nowait(("fut", app.batcher.submit_nowait([ev])))

        async def reader() -> None:
            buf, lineno, skipping = b"", 0, False
            try:
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        break
                    buf += msg.get("body", b"")
                    while True:
                        nl = buf.find(b"\n")
                        if nl < 0:
                            break
                        line, buf = buf[:nl], buf[nl + 1 :]
                        lineno += 1
                        if skipping:
                            skipping = False
                            continue
                        handle(line, lineno)
                    if len(buf) > limit:
                        lineno += 1
                        e = TooLarge(f"line is over the limit of {limit} bytes")
                        q.put_nowait(("err", {"line": lineno, "error": str(e), "code": e.code}))
                        buf, skipping = b"", True
                    if not msg.get("more_body", False):
                        break
                if buf.strip() and not skipping:
                    handle(buf, lineno + 1)
            finally:
                q.put_nowait(None)

        task = asyncio.create_task(reader())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson")],
            }
        )
        try:
            while True:
                item = await q.get()
                if item is None:
                    break
                kind, val = item
                if kind == "fut":
                    try:
                        (r,) = await val
                        obj = _out(r, k)
                    except RuntimeUserError as e:
                        obj = {"error": str(e), "code": e.code}
                else:
                    obj = val
                await send(
                    {
                        "type": "http.response.body",
                        "body": jsonio.dumps(obj) + b"\n",
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            app.metrics.inc("recblr_requests_total", endpoint="stream", status="200")
            app.metrics.observe(
                "recblr_request_latency_seconds", time.perf_counter() - t0, endpoint="stream"
            )


_JSON_HEADERS = [(b"content-type", b"application/json")]


_json_bytes = jsonio.dumps


class FastEvents:
    """Raw ASGI front: `POST /v1/events` skips Starlette's middleware, routing and Request.

    It is the hot path (one request per event); every other request, and the lifespan, goes
    to the Starlette app. Same answers, errors and metrics as the rest of the API.
    """

    def __init__(self, app: App, asgi: Starlette):
        self.app = app
        self.asgi = asgi
        self.state = asgi.state  # `create_app(...).state.recblr` keeps working

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/events" or scope["method"] != "POST":
            await self.asgi(scope, receive, send)
            return
        app = self.app
        t0 = time.perf_counter()
        app.reading += 1
        queued = [False]

        def on_queued() -> None:
            if not queued[0]:
                queued[0] = True
                app.reading -= 1

        status, started = 200, False
        try:
            try:
                payload = await self._events(scope, receive, on_queued)
            except RuntimeUserError as e:
                app.metrics.inc("recblr_errors_total", code=e.code)
                status, payload = e.status, {"error": str(e), "code": e.code}
            body = _json_bytes(payload)
            started = True
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS],
                }
            )
            await send({"type": "http.response.body", "body": body})
        except Exception:
            status = 500
            if not started:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
            raise  # the server logs it, as Starlette's ServerErrorMiddleware does
        finally:
            on_queued()
            app.metrics.request_done("events", status, time.perf_counter() - t0)

    async def _events(self, scope, receive, on_queued):
        app = self.app
        engine = app.engine
        qs = scope.get("query_string", b"")
        if qs:
            raw_k = QueryParams(qs).get("k")
            k = engine.top_k if raw_k is None else _parse_k(raw_k, engine)
        else:
            k = engine.top_k
        body = parse_json(await _read_body_asgi(scope, receive, app.settings.max_body_bytes))
        evs = events_of(body, app)
        if evs is None:  # one event
            ev = parse_event(body, engine)
            on_queued()
            (res,) = await app.batcher.submit([ev])
            return _out(res, k)
        if not evs:
            return {"results": []}
        on_queued()
        res = await app.batcher.submit(evs)
        return {"results": [_out(r, k) for r in res]}


async def _read_body_asgi(scope, receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise TooLarge(f"request body is {value.decode()} bytes; the limit is {limit}")
            break
    msg = await receive()
    body = msg.get("body", b"")
    if len(body) > limit:
        raise TooLarge(f"request body is over the limit of {limit} bytes")
    if not msg.get("more_body", False):
        return body
    chunks, n = [body], len(body)
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunk = msg.get("body", b"")
        n += len(chunk)
        if n > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            break
    return b"".join(chunks)


def create_app(engine: Engine, settings: ServerSettings | None = None):
    """The ASGI app for an engine (Starlette behind a fast front for `POST /v1/events`);
    `app.state.recblr` is the App object."""
    a = App(engine, settings)
    a.asgi.state.recblr = a
    return FastEvents(a, a.asgi)
