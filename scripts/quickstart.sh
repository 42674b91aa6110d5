#!/usr/bin/env bash
# The whole pipeline on real MovieLens-100K, end to end:
#   fetch -> train + evaluate -> export cell.onnx (verified) -> serve -> stream events -> recommendations.
# Installs what it needs (scripts/setup-env.sh). EPOCHS=N shortens training for a quick look.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$root/scripts/setup-env.sh"
work="${RECBLR_WORK:-$root/runs/quickstart}"
mkdir -p "$work"
cd "$work"

echo "== 1. data: MovieLens-100K into the user cache"
recblr data fetch ml-100k
recblr data info ml-100k

echo "== 2. train (best validation NDCG@10 checkpoint -> model.pt) and evaluate on the test split"
recblr train --data ml-100k --out model.pt ${EPOCHS:+--epochs "$EPOCHS"} >/dev/null
recblr evaluate model.pt

echo "== 3. export the per-step cell, checked against the PyTorch model"
recblr-export model.pt -o cell.onnx --top-k 20 --verify

echo "== 4. serve it (never recommending the last 20 items seen) and stream a new user's events"
rm -f state.db state.db-wal state.db-shm
recblr-serve --onnx cell.onnx --port 0 --state state.db --exclude-seen 20 >serve.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
    grep -q "listening on" serve.log && break
    kill -0 "$server" 2>/dev/null || { cat serve.log; exit 1; }
    sleep 0.1
done
url=$(grep -o "http://[0-9.]*:[0-9]*" serve.log | head -n 1)
echo "server at $url"
python - "$url" <<'PY'
import json
import sys
import urllib.request

url = sys.argv[1]


def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


# A new user watches Star Wars (50), Return of the Jedi (181), Contact (258), Fargo (100).
for item in ["50", "181", "258", "100"]:
    recs = call("POST", "/v1/events", {"user": "quickstart-user", "item": item})
    print(f"after item {item:>4}: top-5 {recs['items'][:5]}")
final = call("GET", "/v1/users/quickstart-user/recommendations?k=10")
print("recommendations:", json.dumps(final["items"]))
PY

echo "== 5. stop the server (SIGTERM drains and flushes state)"
kill -TERM "$server"
wait "$server" || true
trap - EXIT
echo "done: $work/model.pt, $work/cell.onnx"
