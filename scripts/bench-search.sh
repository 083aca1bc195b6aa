#!/usr/bin/env bash
# Search figures of `mnemo serve` on its default local store:
#  1. write-to-searchable delay: clients append a message with a unique word and search for it at
#     once (mnemo-bench load --workload append-search); every miss would be an error;
#  2. restart time: the search index is rebuilt from the store at start; the server logs how long.
#   bash scripts/bench-search.sh [seconds-per-level]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_LEVEL=${1:-10}
cargo build --release --locked -p mnemo -p mnemo-bench >/dev/null
BIN=${CARGO_TARGET_DIR:-target}/release
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start() {
  "$BIN/mnemo" serve --data-dir "$dir" --listen "127.0.0.1:$port" >>"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 3000); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
start
echo; echo "### write-to-searchable (search latency right after the acknowledged append)"
"$BIN/mnemo-bench" load --url "http://127.0.0.1:$port" --workload append-search --clients 1,16,64 --seconds "$SECONDS_PER_LEVEL" --targets 1000
kill "$pid"; wait "$pid" 2>/dev/null || true
echo; echo "### restart: rebuild of the search index from the store"
start
grep "search index built" "$dir/log" | tail -n 1
kill "$pid"; wait "$pid" 2>/dev/null || true
