#!/usr/bin/env bash
# Apache Spark reads a research export: starts mnemo on a temporary data directory, writes
# conversations of consenting and non-consenting users, exports them over HTTP, then reads the
# dataset with pyspark (Debian's OpenJDK 17) and checks it against the manifest: row counts,
# column types, the join of items to conversations, and no row of a user who did not consent.
#
# Not part of scripts/test.sh: pyspark is a 450 MB download. Usage: bash scripts/check-spark.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${SPARK_VENV:-$ROOT/.venv-spark}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if ! command -v java >/dev/null; then
  sudo apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless
fi
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import pyspark" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check pyspark==4.3.0
fi
(cd "$ROOT" && cargo build --release --locked -p mnemo)
TMP=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$TARGET/release/mnemo" serve --data-dir "$TMP/data" --listen "127.0.0.1:$PORT" >"$TMP/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

"$VENV/bin/python" - "$PORT" "$TMP/dataset" <<'PY'
import json, sys, time, urllib.request
port, out = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"

def call(method, path, body=None, user=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("content-type", "application/json")
    if user:
        req.add_header("X-Mnemo-User", user)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())

for u in range(20):
    user = f"spark-user-{u}"
    if u % 4:
        call("PUT", f"/v1/admin/users/{user}/consent", {"research": True})
    for c in range(5):
        items = [{"type": "message", "role": "user" if i % 2 == 0 else "assistant",
                  "content": f"message {i} of conversation {c}, mail {user}@example.com"} for i in range(20)]
        call("POST", "/v1/conversations", {"items": items, "metadata": {"c": str(c)}}, user)
job = call("POST", "/v1/admin/exports", {"to": f"file://{out}"})
while job["status"] in ("queued", "running"):
    time.sleep(0.2)
    job = call("GET", f"/v1/admin/exports/{job['id']}")
assert job["status"] == "succeeded", job

from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[2]").appName("mnemo-export-check").getOrCreate()
manifest = json.load(open(f"{out}/_manifest.json"))
paths = lambda t: [f"{out}/{f['path']}" for f in manifest["files"] if f["table"] == t]
rows = lambda t: sum(f["rows"] for f in manifest["files"] if f["table"] == t)
items = spark.read.parquet(*paths("items"))
convs = spark.read.parquet(*paths("conversations"))
assert items.count() == rows("items") == 15 * 5 * 20, items.count()
assert convs.count() == rows("conversations") == 15 * 5, convs.count()
types = dict(items.dtypes)
assert types["seq"] == "bigint" and types["created_at"] == "timestamp" and types["text"] == "string", types
joined = items.join(convs, ["tenant", "user", "conversation"]).count()
assert joined == items.count(), joined
assert items.filter(items.text.contains("@example.com")).count() == 0
assert items.filter(items.text.contains("[EMAIL]")).count() == items.count()
assert items.select("user").distinct().count() == 15
items.groupBy("role").count().orderBy("role").show()
print(f"spark {spark.version} read {items.count()} items and {convs.count()} conversations: ok")
spark.stop()
PY
