#!/usr/bin/env bash
# The change stream under load: W1 (durable appends, 64 clients) with and without a consumer
# following GET /v1/changes/stream, alternating, on one server. Reports the writers' throughput
# each way and the consumer's delay from commit to delivery (receive time minus the event's
# `seq`, a clock of commit time in microseconds: an upper bound of the delay from
# acknowledgement, since `seq` is taken before the write is durable).
#   bash scripts/bench-changes.sh [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
ROUNDS=${2:-2}
PY=${PY:-.venv/bin/python}
cargo build --release --locked -p mnemo -p mnemo-bench >/dev/null
BIN=${CARGO_TARGET_DIR:-target}/release
dir=$(mktemp -d)
port=18080  # below the ephemeral range (see NOTES on TIME_WAIT)
"$BIN/mnemo" serve --data-dir "$dir" --listen "127.0.0.1:$port" >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "command: bash scripts/bench-changes.sh $SECS $ROUNDS"
load() { "$BIN/mnemo-bench" load --url "http://127.0.0.1:$port" --workload append --clients 64 --seconds "$SECS" --targets 1000 | tail -n 1; }
for round in $(seq 1 "$ROUNDS"); do
  echo; echo "round $round, no consumer:"; load
  # The cost of serving a stream, with a consumer that does no work of its own (curl).
  cursor=$(curl -s "http://127.0.0.1:$port/v1/changes?after=now" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["next_cursor"])')
  curl -sN "http://127.0.0.1:$port/v1/changes/stream?after=$cursor" >"$dir/stream-$round" &
  curl_pid=$!
  sleep 1
  echo "round $round, one consumer (curl, no parsing):"; load
  sleep 1; kill $curl_pid 2>/dev/null || true; wait $curl_pid 2>/dev/null || true
  echo "curl received $(grep -c '^id:' "$dir/stream-$round") events"
  # Delivery delay, with a consumer that parses every event (Python, sseclient-py); it shares
  # the machine's two cores with the server and the writers.
  cursor=$(curl -s "http://127.0.0.1:$port/v1/changes?after=now" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["next_cursor"])')
  "$PY" - "$port" "$cursor" "$dir/delays-$round" <<'PYEOF' &
import json, signal, sys, time
import sseclient


def stop(*_):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, stop)
try:
    import httpx2 as httpx
except ImportError:
    import httpx
port, cursor, out = sys.argv[1], sys.argv[2], sys.argv[3]
delays = []
with httpx.Client(timeout=httpx.Timeout(10, read=None)) as c:
    with c.stream("GET", f"http://127.0.0.1:{port}/v1/changes/stream", params={"after": cursor}) as r:
        try:
            for ev in sseclient.SSEClient(r.iter_bytes()).events():
                now_us = time.time_ns() // 1000
                delays.append(now_us - json.loads(ev.data)["seq"])
                if len(delays) % 1000 == 0:
                    open(out, "w").write("\n".join(map(str, delays)))
        except KeyboardInterrupt:
            pass
open(out, "w").write("\n".join(map(str, delays)))
PYEOF
  cpid=$!
  sleep 1
  echo "round $round, one consumer (Python, parsing):"; load
  sleep 1; kill -TERM $cpid 2>/dev/null || true; wait $cpid 2>/dev/null || true
  "$PY" - "$dir/delays-$round" <<'PYEOF'
import sys
d = sorted(int(x) for x in open(sys.argv[1]).read().split())
q = lambda p: d[min(len(d) - 1, int(p * len(d)))] / 1000
print(f"consumer: {len(d)} events, delay p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {d[-1]/1000:.2f} ms")
PYEOF
done
