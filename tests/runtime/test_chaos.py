"""Chaos: 32 clients send seq-numbered events for 200 users while the server is killed with
SIGKILL at random moments and restarted, five times. Clients retry on connection errors,
timeouts and 5xx. At the end every user's stored state equals replaying that user's events
exactly once through the cell: nothing acknowledged is lost, nothing is applied twice."""

from __future__ import annotations

import random
import socket
import threading
import time

import httpx
import numpy as np

ITEMS = [str(1000 + i) for i in range(1, 61)]
N_USERS, N_CLIENTS, PER_USER, KILLS = 200, 32, 12, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkill_restarts_lose_nothing_and_apply_nothing_twice(
    cell, start_server, tmp_path, states_of, replay_fn
):
    db = tmp_path / "chaos.db"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(11)
    plan = {f"c{u}": [rng.choice(ITEMS) for _ in range(PER_USER)] for u in range(N_USERS)}
    users = list(plan)
    total = N_USERS * PER_USER
    counts = {"sent": 0, "acked": 0, "retried": 0, "duplicate_acks": 0}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(ci: int) -> None:
        mine = users[ci::N_CLIENTS]  # one client per user: its events go in seq order
        with httpx.Client(base_url=url, timeout=httpx.Timeout(3.0, connect=1.0)) as c:
            for seq in range(1, PER_USER + 1):
                for u in mine:
                    ev = {"user": u, "item": plan[u][seq - 1], "seq": seq}
                    first = True
                    while True:
                        with lock:
                            counts["sent"] += 1
                            counts["retried"] += not first
                        first = False
                        try:
                            r = c.post("/v1/events", json=ev)
                        except httpx.TransportError:
                            time.sleep(0.05)
                            continue
                        if r.status_code >= 500:
                            time.sleep(0.05)
                            continue
                        assert r.status_code == 200, r.text
                        with lock:
                            counts["acked"] += 1
                            counts["duplicate_acks"] += r.json().get("applied", True) is False
                        break

    def run(ci: int) -> None:
        try:
            client(ci)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    srv = start_server(cell, "--port", str(port), "--max-batch", "64", state=db)
    threads = [threading.Thread(target=run, args=(ci,)) for ci in range(N_CLIENTS)]
    for t in threads:
        t.start()
    marks = sorted(rng.uniform(0.1, 0.85) * total for _ in range(KILLS))
    kills = 0
    for mark in marks:
        while counts["acked"] < mark and any(t.is_alive() for t in threads):
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))  # a random moment: mid-batch, mid-commit, mid-answer
        srv.kill9()
        kills += 1
        srv = start_server(cell, "--port", str(port), "--max-batch", "64", state=db)
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert kills == KILLS and counts["acked"] == total
    srv.term()

    states = states_of(db)
    lost = 0
    for u, items in plan.items():
        st = states.get(u)
        if st is None or st.n != PER_USER or st.seq != PER_USER:
            lost += 1
            continue
        np.testing.assert_allclose(st.state, replay_fn(cell, items)[0], atol=1e-4, err_msg=u)
        assert st.recent == items  # the stored history is the events, once each, in order
    print(
        f"chaos: {counts['sent']} sent, {counts['acked']} acknowledged, {counts['retried']} "
        f"retried ({counts['duplicate_acks']} answered as duplicates), {lost} lost, "
        f"{kills} SIGKILLs"
    )
    assert lost == 0
