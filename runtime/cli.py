"""Command lines: `recblr-serve` (HTTP server or --stdin pipe) and `recblr score`.

Both are typer apps called with an argv list; a user error (RecblrError) is printed as one
line on stderr and the process exits 2. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from enum import Enum
from pathlib import Path

import typer

from recblr.errors import RecblrError
from recblr.runtime import jsonio


class StoreKind(str, Enum):
    sqlite = "sqlite"
    memory = "memory"


class Durability(str, Enum):
    normal = "normal"
    full = "full"


class Policy(str, Enum):
    error = "error"
    skip = "skip"


class Providers(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def _fail(prog: str, e: Exception) -> typer.Exit:
    msg = " ".join(str(e).split()) or type(e).__name__
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    return typer.Exit(2)


serve_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


GIL_SWITCH_US = 200


@serve_app.command()
def serve(
    onnx: Path = typer.Option(..., "--onnx", help="the exported cell (cell.onnx)"),
    host: str = typer.Option("127.0.0.1", help="bind address (loopback unless told otherwise)"),
    port: int = typer.Option(8000, help="TCP port (0 = pick a free one; printed at start)"),
    state: Path = typer.Option(Path("recblr-state.db"), help="SQLite state file (--store sqlite)"),
    store: StoreKind = typer.Option(StoreKind.sqlite, help="sqlite (durable) or memory (LRU)"),
    memory_users: int = typer.Option(1_000_000, help="users kept by --store memory (LRU)"),
    durability: Durability = typer.Option(
        Durability.normal,
        help="normal: survives kill -9; full: fsync per batch, survives power loss",
    ),
    max_batch: int = typer.Option(256, help="events per ORT call (1 = micro-batching off)"),
    max_wait_ms: float = typer.Option(2.0, help="how long a batch waits to fill"),
    exclude_seen: int = typer.Option(0, help="never recommend the user's last N items"),
    unknown_items: Policy = typer.Option(Policy.error, help="unknown item ids: error or skip"),
    providers: Providers = typer.Option(Providers.auto, help="auto (GPU if usable), cpu, cuda"),
    threads: int = typer.Option(
        1,
        help="ORT intra-op threads (0 = ORT default). 1 by default: serving batches are small, "
        "and ORT's spinning pool threads compete with the event loop for the cores",
    ),
    max_body_bytes: int = typer.Option(1 << 20, help="largest request body / NDJSON line"),
    max_history: int = typer.Option(10_000, help="longest history a PUT may send"),
    gil_switch_us: int = typer.Option(
        GIL_SWITCH_US,
        help="Python's GIL switch interval in µs (0 = Python's 5,000). Shorter: the engine "
        "thread waits less for the GIL after each ORT call while the event loop is busy",
    ),
    stdin: bool = typer.Option(False, "--stdin", help="pipe mode: NDJSON events in, recs out"),
    log_level: str = typer.Option("warning", help="uvicorn log level: " + ", ".join(LOG_LEVELS)),
) -> None:
    """Serve incremental recommendations from an exported RecBLR cell."""
    prog = "recblr-serve"
    if not 0 <= port <= 65535:
        raise _fail(prog, ValueError(f"--port {port}: must be in 0..65535 (0 = any free port)"))
    if log_level.lower() not in LOG_LEVELS:
        raise _fail(
            prog, ValueError(f"--log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
        )
    if not 0 <= gil_switch_us <= 1_000_000:
        msg = f"--gil-switch-us {gil_switch_us}: must be in 0..1000000 (0 = Python's default)"
        raise _fail(prog, ValueError(msg))
    from recblr.runtime.engine import Engine
    from recblr.runtime.store import open_store

    try:
        st = open_store(
            "memory" if store == StoreKind.memory else str(state),
            durability=durability.value,
            capacity=memory_users,
        )
    except RecblrError as e:
        raise _fail(prog, e) from None
    except Exception as e:  # e.g. the state file's folder is missing
        why = f"folder {state.parent} does not exist" if not state.parent.is_dir() else str(e)
        msg = f"--state {state}: cannot open the state store ({why})"
        raise _fail(prog, ValueError(msg)) from None
    try:
        try:
            engine = Engine(
                onnx,
                providers=providers.value,
                store=st,
                exclude_seen=exclude_seen,
                unknown_items=unknown_items.value,
                threads=threads or None,
            )
        except Exception as e:
            raise _fail(prog, e) from None
        if stdin:
            run_stdin(engine, max_batch=max_batch)
            return
        set_gil_switch_interval(gil_switch_us)
        try:
            run_http(
                engine,
                host,
                port,
                max_batch,
                max_wait_ms,
                max_body_bytes,
                max_history,
                log_level.lower(),
            )
        except OSError as e:  # e.g. the port is taken, or the host cannot be bound
            raise _fail(prog, ValueError(f"cannot listen on {host}:{port}: {e}")) from None
    finally:
        st.close()  # idempotent: the server's shutdown may have closed it already


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
    max_batch: int,
    max_wait_ms: float,
    max_body_bytes: int,
    max_history: int,
    log_level: str = "warning",
) -> None:
    import uvicorn

    from recblr.runtime.server import ServerSettings, create_app

    app = create_app(
        engine,
        ServerSettings(
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_body_bytes=max_body_bytes,
            max_history=max_history,
        ),
    )
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
        print(f"recblr-serve: one-write responses off ({e}); using uvicorn's default HTTP "
              "protocol", file=sys.stderr)
        http_impl = "auto"
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=30,
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
            info = engine.info
            print(
                f"recblr-serve: listening on http://{host}:{bound} (cell {info.short_hash}, "
                f"{info.n_items} items, K={info.top_k}, {engine.providers[0]}, "
                f"store {getattr(engine.store, 'kind', '?')})",
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
    from recblr.runtime.server import parse_event, parse_json

    out = out or sys.stdout
    err = err or sys.stderr
    # UTF-8 bytes straight to the binary layer when there is one: a text stdout in another
    # encoding (a Latin-1 locale) must not fail on a user id it cannot encode
    out_bin = getattr(out, "buffer", None)
    lineno = 0
    buf = b""

    def answer_line(obj) -> None:
        if out_bin is not None:
            out_bin.write(jsonio.dumps(obj) + b"\n")
        else:
            out.write(jsonio.dumps_line(obj))

    def error_line(n: int, e: RuntimeUserError) -> None:  # the shape /v1/stream answers
        err.write(jsonio.dumps_line({"line": n, "error": str(e), "code": e.code}))

    def process(lines: list[tuple[int, bytes]]) -> None:
        for i in range(0, len(lines), max_batch):
            part = lines[i : i + max_batch]
            evs, slots = [], []
            for n, line in part:
                try:
                    evs.append(parse_event(parse_json(line), engine))
                    slots.append(n)
                except RuntimeUserError as e:
                    error_line(n, e)
            if evs:
                for n, r in zip(slots, engine.apply(evs), strict=False):
                    if isinstance(r, RuntimeUserError):
                        error_line(n, r)
                    elif isinstance(r, Exception):
                        raise r
                    else:
                        answer_line(r.to_json())
            (out_bin if out_bin is not None else out).flush()
            err.flush()

    while True:
        chunk = os.read(fd_in, 1 << 16)
        if not chunk:
            break
        buf += chunk
        *complete, buf = buf.split(b"\n")
        lines = []
        for line in complete:
            lineno += 1
            if line.strip():
                lines.append((lineno, line))
        if lines:
            process(lines)
    if buf.strip():
        process([(lineno + 1, buf)])


score_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@score_app.command()
def score(
    onnx: Path = typer.Option(..., "--onnx", help="the exported cell"),
    input: Path = typer.Option(
        ..., "--input", "-i", help="histories: .jsonl or interactions .csv/.tsv"
    ),
    output: Path = typer.Option(..., "--output", "-o", help="top-K per user: .jsonl or .csv"),
    k: int = typer.Option(0, "--k", help="recommendations per user (0 = the cell's K)"),
    input_format: str = typer.Option("auto", help="auto, jsonl, csv or tsv"),
    output_format: str = typer.Option("auto", help="auto, jsonl or csv"),
    columns: str = typer.Option(None, help="field names of a headerless CSV/TSV"),
    sep: str = typer.Option(None, help="field separator of a CSV/TSV (default by extension)"),
    chunk_size: int = typer.Option(1024, help="users stepped through the cell together"),
    exclude_seen: int = typer.Option(0, help="never recommend the user's last N items"),
    unknown_items: Policy = typer.Option(Policy.error, help="unknown item ids: error or skip"),
    providers: Providers = typer.Option(Providers.auto),
    threads: int = typer.Option(0, help="ORT intra-op threads (0 = ORT default)"),
    progress: bool = typer.Option(True, help="show a progress bar on a terminal"),
) -> None:
    """Score whole histories with the cell; writes top-K per user, streaming in chunks."""
    prog = "recblr score"
    try:
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
        )
        n = score_file(
            engine,
            input,
            output,
            k=k or None,
            chunk_size=chunk_size,
            in_fmt=input_format,
            out_fmt=output_format,
            progress=progress and sys.stderr.isatty(),
            columns=columns,
            sep=sep,
        )
    except RecblrError as e:
        raise _fail(prog, e) from None
    print(f"{prog}: wrote top-{k or engine.top_k} for {n} users to {output}", file=sys.stderr)


def serve_main(argv: list[str] | None = None) -> None:
    """Entry point of `recblr-serve`."""
    serve_app(args=argv, prog_name="recblr-serve")


def score_main(argv: list[str] | None = None) -> None:
    """Entry point of `recblr score` (argv without the 'score' word)."""
    score_app(args=argv, prog_name="recblr score")


if __name__ == "__main__":  # python -m recblr.runtime.cli ...
    serve_main()
