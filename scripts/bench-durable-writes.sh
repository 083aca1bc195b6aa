#!/usr/bin/env bash
# Durable-write latency and throughput of `mnemo serve` on its default local store (fsync on),
# for each WAL flush policy, at several concurrencies. Prints markdown tables.
#   bash scripts/bench-durable-writes.sh [seconds-per-level] [flush intervals...]
# Example: bash scripts/bench-durable-writes.sh 10 0 10 100
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_LEVEL=${1:-10}
shift || true
INTERVALS=("${@:-0 10 100}")
cargo build --release --locked -p mnemo -p mnemo-bench >/dev/null
BIN=${CARGO_TARGET_DIR:-target}/release
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r), disk: $(df -h . | awk 'NR==2{print $1}')"
for interval in ${INTERVALS[@]}; do
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$BIN/mnemo" serve --data-dir "$dir" --listen "127.0.0.1:$port" --flush-interval-ms "$interval" >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  echo; echo "### --flush-interval-ms $interval"
  "$BIN/mnemo-bench" load --url "http://127.0.0.1:$port" --workload append --clients 1,16,64 --seconds "$SECONDS_PER_LEVEL" --targets 1000
  "$BIN/mnemo-bench" load --url "http://127.0.0.1:$port" --workload kv-put --clients 1,64 --seconds "$SECONDS_PER_LEVEL" --targets 1000 | tail -n +3
  flushes=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^mnemo_store_flushes_total/{print $2}')
  writes=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^mnemo_http_requests_total/ && /status="200"/ && (/method="PUT"/ || /items"/) {s+=$2} END{print s}')
  echo "on-demand WAL uploads: ${flushes:-0} for $writes acknowledged writes (timer uploads are not counted)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
done
