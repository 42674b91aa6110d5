"""The OpenAPI document at /openapi.json is true: its routes are exactly the server's, and a
schemathesis run against the real server finds no 5xx and no answer outside the schemas."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def test_document_routes_are_the_servers(cell, start_server):
    from recblr.runtime.engine import Engine
    from recblr.runtime.server import create_app

    routes = create_app(Engine(cell, providers="cpu")).routes()  # the table the app routes by
    srv = start_server(cell, "--store", "memory")
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        doc = c.get("/openapi.json").json()
        assert doc["openapi"].startswith("3.")
        documented = {
            (path, m.upper())
            for path, ops in doc["paths"].items()
            for m in ops
            if m != "parameters"
        }
        # both ways: every route is documented, and every documented operation is a route
        answered = {(path, m) for path, methods in routes.items() for m in methods}
        assert answered == documented, (answered - documented, documented - answered)
        for path in doc["paths"]:
            url = path.replace("{user}", "u%2Fv")
            allowed = sorted(m for p, m in documented if p == path)
            for method in METHODS:
                r = c.request(method, url)
                if method in allowed:
                    assert r.status_code not in (404, 405) or r.json()["code"] == "unknown_user"
                else:
                    assert r.status_code == 405, (method, path, r.status_code)
                    assert sorted(r.headers["allow"].split(", ")) == allowed
        assert c.get("/v1/nothing").status_code == 404


EXAMPLES = 300  # per operation and phase (the issue asks for a few hundred)


def test_schemathesis_finds_nothing(cell, start_server, tmp_path):
    srv = start_server(cell, "--store", "memory", "--max-history", "200")
    env = dict(os.environ)
    env["SCHEMATHESIS_HOOKS"] = "schemathesis_hooks"
    env["PYTHONPATH"] = str(Path(__file__).parent) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{srv.url}/openapi.json",
        "--checks", "all",
        # The server's limits are in UTF-8 bytes (a user id) and in the cell's vocabulary for
        # large catalogs: not expressible as JSON Schema, so request strictness is not checked.
        # A PUT or an event re-creates a deleted user (upsert), which use_after_free would
        # read as a deleted resource coming back.
        "--exclude-checks", "positive_data_acceptance,negative_data_rejection,use_after_free",
        "--max-examples", str(EXAMPLES), "--seed", "7", "--no-shrink", "--workers", "1",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 9 * EXAMPLES, out[-3000:]
    assert "9 selected / 9 total" in out and "Stateful" in out
    print(f"schemathesis: {m.group(1)} test cases ({EXAMPLES} examples per operation), all passed")
