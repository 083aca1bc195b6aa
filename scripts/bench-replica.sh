#!/usr/bin/env bash
# Replication lag (RPO) of `mnemo replicate --watch` under a W1 load (durable appends, 64
# clients) on the default local store, replica in a local directory. Prints the rounds' figures:
#   lag      = finished - as_of of a round (how far behind the replica is when a round ends)
#   exposure = finished(n+1) - as_of(n): the longest time a write can be acknowledged and not
#              yet in the replica (the RPO if the primary is lost just before round n+1 ends)
#   bash scripts/bench-replica.sh [load-seconds] [interval-ms] [clients]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
INTERVAL=${2:-200}
CLIENTS=${3:-64}
cargo build --release --locked -p mnemo -p mnemo-bench >/dev/null
BIN=${CARGO_TARGET_DIR:-target}/release
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/mnemo" serve --data-dir "$dir/p" --listen "127.0.0.1:$port" >"$dir/serve.log" 2>&1 &
spid=$!
trap 'kill $spid ${rpid:-} 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
"$BIN/mnemo" replicate --from "$dir/p/store" --to "$dir/replica" --watch --interval-ms "$INTERVAL" --json \
  >"$dir/rounds.jsonl" 2>"$dir/replicate.log" &
rpid=$!
sleep 1
start_ms=$(date +%s%3N)
"$BIN/mnemo-bench" load --url "http://127.0.0.1:$port" --workload append --clients "$CLIENTS" \
  --seconds "$SECS" --targets 1000 --text words
end_ms=$(date +%s%3N)
sleep 1
kill -INT $rpid; wait $rpid 2>/dev/null || true
python3 - "$dir/rounds.jsonl" "$start_ms" "$end_ms" "$INTERVAL" <<'EOF'
import json, sys
rounds = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
start, end, interval = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
during = [r for r in rounds if start <= r["as_of_ms"] <= end]
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")
lag = [r["lag_ms"] for r in during]
exposure = [b["finished_ms"] - a["as_of_ms"] for a, b in zip(during, during[1:])]
mib = sum(r["copied_bytes"] for r in during) / 2**20
print(f"\nrounds during the load: {len(during)} (pause between rounds {interval} ms); "
      f"copied {mib:.1f} MiB in {sum(r['copied_objects'] for r in during)} objects")
print("| figure | p50 ms | p99 ms | max ms |")
print("|---|---|---|---|")
print(f"| lag (round end - its point) | {pct(lag,50)} | {pct(lag,99)} | {max(lag)} |")
print(f"| exposure (RPO bound) | {pct(exposure,50)} | {pct(exposure,99)} | {max(exposure)} |")
EOF
