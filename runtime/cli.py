"""Command lines: `recblr-serve` (HTTP server or --stdin pipe) and `recblr score`.

`serve` and `score` are plain typer command functions (the `recblr` CLI registers the same
functions as `recblr serve` / `recblr score`); `serve_main` / `score_main` are the console
entry points. A user error (RecblrError) goes through `recblr.errors.user_errors`: one line
`PROG: error: message` on stderr and the error's exit code. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from recblr.errors import RecblrError, user_errors
from recblr.runtime import jsonio
from recblr.runtime.store import DEFAULT_KEEP_HISTORY


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice type whose members are named by their values (`Kind.memory`, `Kind("memory")`)."""
    return Enum(name, {v: v for v in values}, type=str)


Durability = choices("Durability", ("normal", "full"))
AdminReload = choices("AdminReload", ("off", "loopback", "any"))
Policy = choices("Policy", ("error", "skip"))
Providers = choices("Providers", ("auto", "cpu", "cuda"))
InputFormat = choices("InputFormat", ("auto", "jsonl", "csv", "tsv"))
OutputFormat = choices("OutputFormat", ("auto", "jsonl", "csv"))


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
GIL_SWITCH_US = 200

# Options both commands take, declared once.
OnnxOpt = Annotated[Path, typer.Option("--onnx", help="the exported cell (cell.onnx)")]
ExcludeSeenOpt = Annotated[int, typer.Option(help="never recommend the user's last N items")]
UnknownItemsOpt = Annotated[Policy, typer.Option(help="unknown item ids: error or skip")]
ProvidersOpt = Annotated[Providers, typer.Option(help="auto (GPU if usable), cpu, cuda")]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RecblrError(message)


@user_errors
def serve(
    onnx: OnnxOpt,
    host: Annotated[str, typer.Option(help="bind address (loopback unless told otherwise)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port (0 = pick a free one; printed at start)")] = (
        8000
    ),
    store: Annotated[
        str,
        typer.Option(
            help="where user state lives: sqlite (durable, in the --state file), memory (LRU, "
            "lost on exit), or redis://HOST:PORT/DB (rediss://, valkey://, unix:// too): a "
            "Valkey/Redis server any number of servers share (docs/valkey.md)"
        ),
    ] = "sqlite",
    state: Annotated[str, typer.Option(help="the SQLite file of --store sqlite")] = (
        "recblr-state.db"
    ),
    memory_users: Annotated[int, typer.Option(help="users kept by --store memory (LRU)")] = (
        1_000_000
    ),
    durability: Annotated[
        Durability,
        typer.Option(
            help="normal: survives kill -9; full: fsync per batch, survives power loss (on "
            "Valkey/Redis: refuses a server that does not run appendfsync always)"
        ),
    ] = Durability.normal,
    max_batch: Annotated[int, typer.Option(help="events per ORT call (1 = no micro-batching)")] = (
        256
    ),
    max_wait_ms: Annotated[float, typer.Option(help="how long a batch waits to fill")] = 2.0,
    exclude_seen: ExcludeSeenOpt = 0,
    keep_history: Annotated[
        int,
        typer.Option(
            help="recent items kept per user (at least --exclude-seen), as external ids: "
            "GET /v1/users/{user}/history returns them"
        ),
    ] = DEFAULT_KEEP_HISTORY,
    unknown_items: UnknownItemsOpt = Policy.error,
    providers: ProvidersOpt = Providers.auto,
    threads: Annotated[
        int,
        typer.Option(
            help="ORT intra-op threads (0 = ORT default). 1 by default: serving batches are "
            "small, and ORT's spinning pool threads compete with the event loop for the cores"
        ),
    ] = 1,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body / NDJSON line")] = (
        1 << 20
    ),
    max_history: Annotated[int, typer.Option(help="longest history a PUT may send")] = 10_000,
    max_requests: Annotated[
        int,
        typer.Option(help="requests in progress at once; the next is answered 503 overloaded"),
    ] = 1024,
    body_timeout: Annotated[
        float,
        typer.Option(
            help="seconds a request body (or a stream's next chunk) may take to arrive; keep it "
            "below --shutdown-timeout so a stalled body is cut by its own clock"
        ),
    ] = 5.0,
    shutdown_timeout: Annotated[
        float,
        typer.Option(help="seconds open requests get to finish after SIGTERM"),
    ] = 10.0,
    gil_switch_us: Annotated[
        int,
        typer.Option(
            help="Python's GIL switch interval in µs (0 = Python's 5,000). Shorter: the engine "
            "thread waits less for the GIL after each ORT call while the event loop is busy"
        ),
    ] = GIL_SWITCH_US,
    admin_reload: Annotated[
        AdminReload,
        typer.Option(
            help="who may POST /admin/reload (swap the cell live): loopback clients, any, or "
            "off. SIGHUP reloads the last cell path either way"
        ),
    ] = AdminReload.loopback,
    stdin: Annotated[
        bool, typer.Option("--stdin", help="pipe mode: NDJSON events in, recs out")
    ] = False,
    log_level: Annotated[
        str, typer.Option(help="uvicorn log level: " + ", ".join(LOG_LEVELS))
    ] = "warning",
) -> None:
    """Serve incremental recommendations from an exported RecBLR cell."""
    _check(0 <= port <= 65535, f"--port {port}: must be in 0..65535 (0 = any free port)")
    _check(
        log_level.lower() in LOG_LEVELS,
        f"--log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}",
    )
    _check(
        0 <= gil_switch_us <= 1_000_000,
        f"--gil-switch-us {gil_switch_us}: must be in 0..1000000 (0 = Python's default)",
    )
    _check(keep_history >= 0, f"--keep-history {keep_history}: must be >= 0")
    _check(body_timeout > 0, f"--body-timeout {body_timeout}: must be > 0 seconds")
    _check(shutdown_timeout > 0, f"--shutdown-timeout {shutdown_timeout}: must be > 0 seconds")
    _check(max_requests >= 1, f"--max-requests {max_requests}: must be >= 1")
    from recblr.runtime.engine import Engine

    st = _open_store(store_spec(store, state), durability, memory_users)
    warning = getattr(st, "durability_warning", None)
    if warning:
        print(f"recblr-serve: warning: {warning}", file=sys.stderr, flush=True)
    try:
        engine = Engine(
            onnx,
            providers=providers.value,
            store=st,
            exclude_seen=exclude_seen,
            unknown_items=unknown_items.value,
            threads=threads or None,
            keep_history=keep_history,
        )
        if stdin:
            run_stdin(engine, max_batch=max_batch)
            return
        set_gil_switch_interval(gil_switch_us)
        from recblr.runtime.server import ServerSettings

        settings = ServerSettings(
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_body_bytes=max_body_bytes,
            max_history=max_history,
            body_timeout_s=body_timeout,
            max_requests=max_requests,
            admin_reload=admin_reload.value,
        )
        try:
            run_http(engine, host, port, settings, log_level.lower(), shutdown_timeout)
        except OSError as e:  # e.g. the port is taken, or the host cannot be bound
            raise RecblrError(f"cannot listen on {host}:{port}: {e}") from None
    finally:
        st.close()  # idempotent: the server's shutdown may have closed it already


def store_spec(store: str, state: str) -> str:
    """`--store` and `--state` as `open_store`'s one spec: 'memory', a Valkey/Redis URL, or
    the SQLite file. A URL belongs to --store only (one way to say it)."""
    from recblr.runtime.redis_store import SCHEMES

    if store == "memory":
        return "memory"
    if store.startswith(SCHEMES):
        return store
    _check(
        store == "sqlite",
        f"--store {store!r}: use sqlite, memory or a Valkey/Redis URL (redis://HOST:PORT/DB)",
    )
    _check(
        not state.startswith(SCHEMES),
        "--state is the SQLite file; give a Valkey/Redis store as --store redis://HOST:PORT/DB",
    )
    return state


def _open_store(spec: str, durability: Durability, memory_users: int):
    from recblr.runtime.store import open_store

    try:
        return open_store(spec, durability=durability.value, capacity=memory_users)
    except RecblrError:
        raise
    except Exception as e:  # e.g. the state file's folder is missing
        parent = Path(spec.removeprefix("sqlite:")).parent
        why = f"folder {parent} does not exist" if not parent.is_dir() else str(e)
        raise RecblrError(f"--state {spec}: cannot open the state store ({why})") from None


def store_desc(store) -> str:
    """The store as the start line names it: its kind, and a Valkey/Redis server's promise."""
    kind = getattr(store, "kind", type(store).__name__)
    promise = getattr(store, "server_durability", None)
    return f"{kind}, {promise}" if promise else kind


def set_gil_switch_interval(us: int) -> None:
    """Shorten how long a thread waits for the GIL before its holder is made to drop it.

    The engine runs each batch in a worker thread, which gives up the GIL in the ORT call and
    the SQLite write and then needs it back, while the event loop thread parses requests and
    writes answers and rarely gives it up on its own. At Python's 5 ms the engine thread can
    sit idle up to that long per call; the README's serving section has the measured effect.
    0 keeps Python's setting.
    """
    if us > 0:
        sys.setswitchinterval(us / 1e6)


def run_http(
    engine,
    host: str,
    port: int,
    settings,
    log_level: str = "warning",
    shutdown_timeout: float = 10.0,
) -> None:
    """Serve `engine` over HTTP until SIGINT/SIGTERM; open requests then get
    `shutdown_timeout` seconds (a stalled body is cut earlier by its own timeout)."""
    import uvicorn

    from recblr.runtime.server import create_app

    app = create_app(engine, settings)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only for such sockets;
    # without it Nagle + delayed ACK add ~40 ms to every response.
    sock = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    try:  # httptools comes with uvicorn's `standard` extra; without it, uvicorn's own choice
        from recblr.runtime.httpproto import CoalescingHttpToolsProtocol as http_impl
    except ImportError as e:  # pragma: no cover
        print(
            f"recblr-serve: one-write responses off ({e}); using uvicorn's default HTTP protocol",
            file=sys.stderr,
        )
        http_impl = "auto"
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=shutdown_timeout,
        # Per-request work we do not use: client addresses from X-Forwarded-For (the app
        # never reads them; there is no access log) and a `server: uvicorn` header.
        proxy_headers=False,
        server_header=False,
        http=http_impl,  # one write per response (see runtime/httpproto.py)
        ws="none",  # the API has no websocket routes
    )
    server = uvicorn.Server(config)

    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, app.reloader.on_sighup
            )  # reload the last cell path
            await app.reloader.boot()  # carry over records another cell made (a restart)
            info = engine.info
            print(
                f"recblr-serve: listening on http://{host}:{bound} (cell {info.short_hash}, "
                f"{info.n_items} items, K={info.top_k}, {engine.providers[0]}, "
                f"store {store_desc(engine.store)})",
                file=sys.stderr,
                flush=True,
            )
        await task

    _run_fast_loop(main())


def _run_fast_loop(coro) -> None:
    """Run on uvloop when it is installed (uvicorn's `standard` extra), else plain asyncio.

    `Server.serve` inside our own loop skips uvicorn's loop setup, so we choose it here.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)
    else:  # pragma: no cover - Python 3.10
        loop = uvloop.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(coro)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def run_stdin(engine, max_batch: int = 256, fd_in: int = 0, out=None, err=None) -> None:
    """NDJSON events on fd_in -> one recommendation line per event on stdout.

    Lines that are already available are applied together (up to max_batch per ORT call);
    a bad line gets a JSON error line {"line", "error", "code"} on stderr -- the event parser
    and codes of /v1/stream -- and the rest go on.
    """
    from recblr.runtime.errors import RuntimeUserError
    from recblr.runtime.jsonio import LineSplitter, parse_event, parse_json

    out = out or sys.stdout
    err = err or sys.stderr
    # UTF-8 bytes straight to the binary layer when there is one: a text stdout in another
    # encoding (a Latin-1 locale) must not fail on a user id it cannot encode
    out_bin = getattr(out, "buffer", None)
    splitter = LineSplitter(1 << 20)

    def answer_line(obj) -> None:
        if out_bin is not None:
            out_bin.write(jsonio.dumps(obj) + b"\n")
        else:
            out.write(jsonio.dumps_line(obj))

    def error_line(n: int, e: RuntimeUserError) -> None:  # the shape /v1/stream answers
        err.write(jsonio.dumps_line({"line": n, "error": str(e), "code": e.code}))

    def process(lines: list) -> None:
        for i in range(0, len(lines), max_batch):
            part = lines[i : i + max_batch]
            evs, slots = [], []
            for n, line in part:
                try:
                    if isinstance(line, RuntimeUserError):
                        raise line
                    evs.append(parse_event(parse_json(line), engine))
                    slots.append(n)
                except RuntimeUserError as e:
                    error_line(n, e)
            if evs:
                for n, r in zip(slots, engine.apply(evs), strict=True):
                    if isinstance(r, RuntimeUserError):
                        error_line(n, r)
                    elif isinstance(r, Exception):
                        raise r
                    else:
                        answer_line(r.to_json())
            (out_bin if out_bin is not None else out).flush()
            err.flush()

    while chunk := os.read(fd_in, 1 << 16):
        if lines := splitter.feed(chunk):
            process(lines)
    process(splitter.finish())  # stdin ended normally: its last line is complete


@user_errors
def score(
    onnx: OnnxOpt,
    input: Annotated[
        Path, typer.Option("--input", "-i", help="histories: .jsonl or interactions .csv/.tsv")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="top-K per user: .jsonl or .csv")],
    k: Annotated[int, typer.Option("--k", help="recommendations per user (0 = the cell's K)")] = 0,
    input_format: Annotated[InputFormat, typer.Option(help="the input's format")] = (
        InputFormat.auto
    ),
    output_format: Annotated[OutputFormat, typer.Option(help="the output's format")] = (
        OutputFormat.auto
    ),
    columns: Annotated[str | None, typer.Option(help="field names of a headerless CSV/TSV")] = None,
    sep: Annotated[
        str | None, typer.Option(help="field separator of a CSV/TSV (default by extension)")
    ] = None,
    chunk_size: Annotated[int, typer.Option(help="users stepped through the cell together")] = (
        1024
    ),
    exclude_seen: ExcludeSeenOpt = 0,
    unknown_items: UnknownItemsOpt = Policy.error,
    providers: ProvidersOpt = Providers.auto,
    threads: Annotated[int, typer.Option(help="ORT intra-op threads (0 = ORT default)")] = 0,
    progress: Annotated[bool, typer.Option(help="show a progress bar on a terminal")] = True,
) -> None:
    """Score whole histories with the cell; writes top-K per user, streaming in chunks."""
    from recblr.runtime.engine import Engine
    from recblr.runtime.score import score_file
    from recblr.runtime.store import MemoryStore

    engine = Engine(
        onnx,
        providers=providers.value,
        store=MemoryStore(1),
        exclude_seen=exclude_seen,
        unknown_items=unknown_items.value,
        threads=threads or None,
        keep_history=0,
    )
    n = score_file(
        engine,
        input,
        output,
        k=k or None,
        chunk_size=chunk_size,
        in_fmt=input_format.value,
        out_fmt=output_format.value,
        progress=progress and sys.stderr.isatty(),
        columns=columns,
        sep=sep,
    )
    print(f"recblr score: wrote top-{k or engine.top_k} for {n} users to {output}", file=sys.stderr)


def _app(command) -> typer.Typer:
    """A one-command typer app (the console entry points; `recblr` registers the same
    functions as its `serve` and `score` subcommands)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    return app


serve_app = _app(serve)
score_app = _app(score)


def serve_main(argv: list[str] | None = None) -> None:
    """Entry point of `recblr-serve`."""
    serve_app(args=argv, prog_name="recblr-serve")


def score_main(argv: list[str] | None = None) -> None:
    """Entry point of `recblr score` (argv without the 'score' word)."""
    score_app(args=argv, prog_name="recblr score")


if __name__ == "__main__":  # python -m recblr.runtime.cli ...
    serve_main()
