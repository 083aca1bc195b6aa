#!/usr/bin/env bash
# Restart time of `mnemo serve` with and without a search index snapshot, on the default local
# store. Loads N items (20 per conversation, 100 users, DIM-d embeddings and ~25 words of text
# each) plus N/20 memory values, stops the server cleanly (which writes a snapshot), then
# restarts it twice with snapshots (restore + log replay) and twice with them off (full
# rebuild), reading the start-up log lines. Prints the figures.
#   bash scripts/bench-search-restart.sh [items] [dim]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
DIM=${2:-384}
cargo build --release --locked -p mnemo >/dev/null
BIN=${CARGO_TARGET_DIR:-target}/release
PY=${PYTHON:-.venv/bin/python}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start() {  # start [extra flags...]: wall time until /healthz answers goes to $dir/wall
  local t0; t0=$(date +%s.%N)
  echo "===== start $*" >>"$dir/log"
  "$BIN/mnemo" serve --data-dir "$dir" --listen "127.0.0.1:$port" "$@" >>"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 6000); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
  python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')" >"$dir/wall"
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; }
last_start() { awk '/^===== start/{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$dir/log"; }

start
t0=$(date +%s)
"$PY" - "$port" "$N" "$DIM" <<'PYEOF'
import json, random, sys, threading, urllib.request
port, n, dim = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
base = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(500)]
words = [f"w{i}" for i in range(3000)]
convs = n // 20
def post(path, body, user=None, method="POST"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method=method,
                                 headers={"content-type": "application/json", **({"X-Mnemo-User": user} if user else {})})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status in (200, 201), r.status
def work(k):
    r = random.Random(k)
    for c in range(k, convs, 4):
        items = []
        for i in range(20):
            b, e = base[r.randrange(500)], base[r.randrange(500)]
            v = [round(x + 0.3 * y, 4) for x, y in zip(b, e)]
            text = " ".join(words[int(r.random() ** 3 * 3000)] for _ in range(25))
            items.append({"type": "message", "role": "user", "content": text, "embedding": v})
        post("/v1/conversations", {"metadata": {"n": str(c)}, "items": items}, user=f"user{c % 100}")
        b = base[r.randrange(500)]
        post(f"/v1/kv/users/user{c % 100}/note{c}", {"note": " ".join(words[:10]), "embedding": [round(x, 4) for x in b]},
             method="PUT")
ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
PYEOF
echo "loaded $N items ($DIM-d embeddings) and $((N / 20)) memory values in $(( $(date +%s) - t0 )) s"
stop
last_start | grep "search snapshot written" | sed 's/^.*INFO/  shutdown snapshot:/'
du -sh "$dir/store/db/search/snapshots" | sed 's/^/  snapshot files: /'
for run in 1 2; do
  start
  echo "with snapshot, run $run: ready in $(cat "$dir/wall") s; $(last_start | grep 'restored from snapshot' | sed 's/^.*INFO //')"
  stop
  start --search-snapshot-interval-secs 0
  echo "without snapshot, run $run: ready in $(cat "$dir/wall") s; $(last_start | grep 'built from the store' | sed 's/^.*INFO //')"
  stop
done
