"""The real server (uvicorn in a subprocess) over HTTP: endpoints, bad input, durability."""

from __future__ import annotations

import json
import random
import threading

import httpx
import numpy as np
import pytest

ITEMS = [str(1000 + i) for i in range(1, 61)]


def test_endpoints_and_bad_input(cell, start_server, replay_fn):
    srv = start_server(cell, "--max-body-bytes", "4096", "--max-history", "50")
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/healthz").json()["status"] == "ok"

        r = c.post("/v1/events", json={"user": "42", "item": "1007"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user"] == "42" and len(body["items"]) == 10 and len(body["scores"]) == 10
        assert body["items"] == replay_fn(cell, ["1007"])[1]

        r = c.post(
            "/v1/events",
            json={"events": [{"user": "42", "item": "1008"}, {"user": "7", "item": "1001"}]},
        )
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        assert r.json()["results"][0]["items"] == replay_fn(cell, ["1007", "1008"])[1]

        r = c.get("/v1/users/42/recommendations", params={"k": 3})
        assert (
            r.status_code == 200 and r.json()["items"] == replay_fn(cell, ["1007", "1008"])[1][:3]
        )

        r = c.put("/v1/users/9/history", json={"items": ["1001", "1002", "1003"]})
        assert (
            r.status_code == 200
            and r.json()["items"] == replay_fn(cell, ["1001", "1002", "1003"])[1]
        )
        assert c.get("/v1/users/9/recommendations").json()["items"] == r.json()["items"]

        assert c.delete("/v1/users/9").json() == {"user": "9", "deleted": True}
        assert c.get("/v1/users/9/recommendations").status_code == 404
        assert c.delete("/v1/users/9").json()["deleted"] is False

        bad = [
            (c.post("/v1/events", content=b"{not json"), 400, "malformed JSON"),
            (c.post("/v1/events", json={"user": "1"}), 422, "missing field(s): item"),
            (c.post("/v1/events", json={"item": "1001"}), 422, "missing field(s): user"),
            (c.post("/v1/events", json=["x"]), 422, "JSON object"),
            (c.post("/v1/events", json={"user": "1", "item": "nope"}), 422, "unknown item 'nope'"),
            (c.post("/v1/events", json={"user": "1", "item": "1001", "seq": -1}), 422, "seq"),
            (c.post("/v1/events", json={"user": "1", "item": "1001", "seq": 2**63}), 422, "seq"),
            (c.post("/v1/events", json={"user": "u" * 257, "item": "1001"}), 422, "256 bytes"),
            (c.post("/v1/events", json={"user": "é" * 129, "item": "1001"}), 422, "256 bytes"),
            (c.post("/v1/events", content=b"x" * 5000), 413, "4096"),
            (
                c.post(
                    "/v1/events",
                    json={"events": [{"user": "1", "item": "1001"}, {"user": "1", "item": "zz"}]},
                ),
                422,
                "events[1]",
            ),
            (c.get("/v1/users/42/recommendations", params={"k": 0}), 422, "1..10"),
            (c.get("/v1/users/42/recommendations", params={"k": 11}), 422, "1..10"),
            (c.get("/v1/users/42/recommendations", params={"k": "x"}), 422, "integer"),
            (c.post("/v1/events?k=99", json={"user": "1", "item": "1001"}), 422, "1..10"),
            (c.get("/v1/users/" + "u" * 300 + "/recommendations"), 422, "256 bytes"),
            (c.put("/v1/users/9/history", json={"items": ["1001"] * 51}), 422, "limit is 50"),
            (c.put("/v1/users/9/history", json={"items": ["1001", "nope"]}), 422, "unknown item"),
            (c.put("/v1/users/9/history", json={"x": 1}), 422, "items"),
            (c.get("/v1/nothing"), 404, "Not Found"),
            (c.get("/v1/events"), 405, "Method Not Allowed"),
            # a path the file system cannot even look up (a name over 255 bytes)
            (c.post("/admin/reload", json={"onnx": "a" * 300}), 422, "cell refused"),
        ]
        for r, code, text in bad:
            assert r.status_code == code, (r.status_code, r.text, text)
            assert text in r.json()["error"], (r.json(), text)
        # an invalid batch applied nothing: user 1 still unknown
        assert c.get("/v1/users/1/recommendations").status_code == 404
        # still serving
        assert c.post("/v1/events", json={"user": 5, "item": 1003}).status_code == 200

        m = c.get("/metrics").text
        for name in (
            "recblr_requests_total",
            "recblr_errors_total",
            "recblr_users_held",
            "recblr_request_latency_seconds_bucket",
            "recblr_batch_size_bucket",
            "recblr_stale_states_reset_total",
        ):
            assert name in m
        assert 'recblr_errors_total{code="unknown_item"}' in m
        assert "recblr_users_held 3" in m


def test_ndjson_stream(cell, start_server, replay_fn):
    srv = start_server(cell)
    lines = [
        {"user": "a", "item": "1001"},
        "garbage",
        {"user": "b", "item": "1002"},
        {"user": "a", "item": "1003"},
        {"user": "a", "item": "unknown"},
        {"user": "a", "item": "1004"},
    ]
    body = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        with c.stream("POST", "/v1/stream", content=body.encode()) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/x-ndjson")
            out = [json.loads(x) for x in r.iter_lines() if x]
    assert len(out) == len(lines)
    assert out[1]["line"] == 2 and "malformed JSON" in out[1]["error"]
    assert out[4]["line"] == 5 and "unknown item" in out[4]["error"]
    assert out[0]["items"] == replay_fn(cell, ["1001"])[1]
    assert out[3]["items"] == replay_fn(cell, ["1001", "1003"])[1]
    assert out[5]["items"] == replay_fn(cell, ["1001", "1003", "1004"])[1]


def test_restart_keeps_state_and_seq_is_idempotent(cell, start_server, tmp_path, replay_fn):
    db = tmp_path / "s.db"
    srv = start_server(cell, state=db)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for seq, item in enumerate(["1001", "1002", "1003"], 1):
            assert (
                c.post("/v1/events", json={"user": "u", "item": item, "seq": seq}).status_code
                == 200
            )
        # a retry of seq 3 with another item: answered, not applied
        r = c.post("/v1/events", json={"user": "u", "item": "1009", "seq": 3}).json()
        assert r["applied"] is False and r["reason"] == "duplicate"
        assert r["items"] == replay_fn(cell, ["1001", "1002", "1003"])[1]
    assert srv.term() in (0, -15)
    srv2 = start_server(cell, state=db)
    with httpx.Client(base_url=srv2.url, timeout=10) as c:
        r = c.get("/v1/users/u/recommendations").json()
        assert r["seq"] == 3 and r["items"] == replay_fn(cell, ["1001", "1002", "1003"])[1]
        r = c.post("/v1/events", json={"user": "u", "item": "1002", "seq": 2}).json()
        assert r["applied"] is False
        r = c.post("/v1/events", json={"user": "u", "item": "1004", "seq": 4}).json()
        assert r["items"] == replay_fn(cell, ["1001", "1002", "1003", "1004"])[1]


def test_state_from_another_cell_is_reset_once_keeping_seq(cells, start_server, tmp_path, replay_fn):
    """#11.6: with --keep-history 0 (nothing to replay) a cell change resets each user once
    (counted per user, not per read), keeps the stored seq (an already-applied retry stays a
    duplicate) and says so in the answer. With a history the user is replayed (test_reload)."""
    db = tmp_path / "s.db"
    srv = start_server(cells["a"], state=db)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for seq, item in ((1, "1001"), (2, "1002")):
            c.post("/v1/events", json={"user": "u", "item": item, "seq": seq})
    srv.term()
    srv = start_server(cells["b"], "--keep-history", "0", state=db)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for _ in range(2):
            r = c.get("/v1/users/u/recommendations")
            assert r.status_code == 404 and "another cell" in r.json()["error"]
        r = c.post("/v1/events", json={"user": "u", "item": "1009", "seq": 2}).json()
        assert r["applied"] is False and r["reason"] == "duplicate"
        assert r["reset"] == "cell_changed"
        r = c.post("/v1/events", json={"user": "u", "item": "1003", "seq": 3}).json()
        assert "reset" not in r and r["items"] == replay_fn(cells["b"], ["1003"])[1]
        assert c.get("/v1/users/u/recommendations").json()["seq"] == 3
        m = c.get("/metrics").text
        assert "recblr_stale_states_reset_total 1" in m


def test_kill9_loses_no_acknowledged_event(cell, start_server, tmp_path, states_of, replay_fn):
    db = tmp_path / "s.db"
    srv = start_server(cell, state=db)
    acked: dict[str, list[str]] = {f"k{u}": [] for u in range(8)}
    stop = threading.Event()
    rng = random.Random(0)

    def client(users):
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            while not stop.is_set():
                u = rng.choice(users)
                item = rng.choice(ITEMS)
                try:
                    r = c.post("/v1/events", json={"user": u, "item": item})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked[u].append(item)

    threads = [
        threading.Thread(target=client, args=([f"k{2 * i}", f"k{2 * i + 1}"],)) for i in range(4)
    ]
    for t in threads:
        t.start()
    while sum(len(v) for v in acked.values()) < 300:
        threading.Event().wait(0.01)
    srv.kill9()
    stop.set()
    for t in threads:
        t.join()
    states = states_of(db)
    for u, items in acked.items():
        st = states[u]
        # every acknowledged event is in; at most the one in flight per client beyond that
        assert len(items) <= st.n <= len(items) + 1, (u, len(items), st.n)
        if st.n == len(items):
            np.testing.assert_allclose(st.state, replay_fn(cell, items)[0], atol=1e-4)
    srv2 = start_server(cell, state=db)
    with httpx.Client(base_url=srv2.url, timeout=10) as c:
        assert c.get("/v1/users/k0/recommendations").status_code == 200


def test_concurrent_clients_equal_sequential_replay(
    cell, start_server, tmp_path, states_of, replay_fn
):
    db = tmp_path / "s.db"
    srv = start_server(cell, "--max-batch", "64", "--max-wait-ms", "2", state=db)
    n_users, n_clients, per_user = 200, 32, 6
    rng = random.Random(1)
    plan = {f"user{u}": [rng.choice(ITEMS) for _ in range(per_user)] for u in range(n_users)}
    users = list(plan)

    def client(ci):
        mine = users[ci::n_clients]  # each user has one client: its order is defined
        queue = [(u, i) for i in range(per_user) for u in mine]
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for u, i in queue:
                r = c.post("/v1/events", json={"user": u, "item": plan[u][i]})
                assert r.status_code == 200, r.text

    errors = []

    def run(ci):
        try:
            client(ci)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(ci,)) for ci in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        m = c.get("/metrics").text
        sample = {u: c.get(f"/v1/users/{u}/recommendations").json()["items"] for u in users[:20]}
    # micro-batching really happened
    counts = [ln for ln in m.splitlines() if ln.startswith("recblr_batch_size_count")]
    assert counts and int(float(counts[0].split()[-1])) < n_users * per_user
    srv.term()
    states = states_of(db)
    assert len(states) == n_users
    for u, items in plan.items():
        want_state, want_top, _ = replay_fn(cell, items)
        assert states[u].n == per_user
        np.testing.assert_allclose(states[u].state, want_state, atol=1e-4, err_msg=u)
        if u in sample:
            assert sample[u] == want_top


@pytest.mark.parametrize("n", [2])
def test_exclude_seen_and_skip_policy(cell, start_server, n, replay_fn):
    srv = start_server(
        cell, "--store", "memory", "--exclude-seen", str(n), "--unknown-items", "skip"
    )
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        r1 = c.post("/v1/events", json={"user": "x", "item": "1001"}).json()
        r2 = c.post("/v1/events", json={"user": "x", "item": "1002"}).json()
        assert "1001" not in r2["items"] and "1002" not in r2["items"]
        assert r2["items"] == replay_fn(cell, ["1001", "1002"], exclude_seen=n)[1]
        r = c.post("/v1/events", json={"user": "x", "item": "nope"}).json()
        assert r["applied"] is False and r["reason"] == "unknown_item"
        assert r["items"] == r2["items"]
        assert r1["items"] == replay_fn(cell, ["1001"], exclude_seen=n)[1]
