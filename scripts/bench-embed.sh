#!/usr/bin/env bash
# The built-in embedder inside `mnemo serve` (default local store): its cost on durable
# appends, and its throughput. Runs `mnemo-bench load --workload append --text TEXT` (`chat`:
# English chat messages of ~10-60 tokens; `words`: random words, median 200 B, ~100-250 tokens)
# once without and once with --embedding-model; with the model it then waits until a
# `consistency: strong` search succeeds (every appended item embedded) and reports from
# /metrics: items appended, texts embedded, model time, queue overflows, drain time.
#   bash scripts/bench-embed.sh [seconds-per-level] [clients] [text] [model-dir]
# Example: bash scripts/bench-embed.sh 10 1,16,64 chat models/all-minilm-l6-v2
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_LEVEL=${1:-10}
CLIENTS=${2:-1,16,64}
TEXT=${3:-chat}
MODEL=${4:-${MNEMO_MODEL_DIR:-models/all-minilm-l6-v2}}
cargo build --release --locked -p mnemo -p mnemo-bench >/dev/null
BIN=${CARGO_TARGET_DIR:-target}/release
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
metric() {
  curl -s "http://127.0.0.1:$port/metrics" | awk -v n="$1" -v f="${2:-}" \
    'index($1, n) == 1 && (substr($1, length(n) + 1, 1) == "{" || length($1) == length(n)) && index($0, f) {s += $NF} END {printf "%.3f\n", s + 0}'
}
now() { date +%s.%N; }
for mode in off on; do
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  extra=()
  [ "$mode" = on ] && extra=(--embedding-model "$MODEL")
  "$BIN/mnemo" serve --data-dir "$dir" --listen "127.0.0.1:$port" "${extra[@]}" >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  echo; echo "### embedder $mode"
  "$BIN/mnemo-bench" load --url "http://127.0.0.1:$port" --workload append --text "$TEXT" \
    --clients "$CLIENTS" --seconds "$SECONDS_PER_LEVEL" --targets 1000
  if [ "$mode" = on ]; then
    load_end=$(now)
    at_end=$(metric mnemo_embedded_total)
    depth=$(metric mnemo_embed_queue_depth)
    # Wait (at most 30 min) until every appended item is embedded.
    until [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
      -d '{"query": "x", "mode": "vector", "consistency": "strong", "top_k": 1}' \
      "http://127.0.0.1:$port/v1/search")" = 200 ]; do
      if (( $(echo "$(now) - $load_end > 1800" | bc) )); then echo "not drained after 30 min"; break; fi
    done
    drained=$(now)
    appended=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^mnemo_http_requests_total/ && /items"/ && /status="200"/ {s += $NF} END {print s + 0}')
    embedded=$(metric mnemo_embedded_total)
    model_s=$(metric mnemo_embed_batch_seconds_sum)
    batches=$(metric mnemo_embed_batch_seconds_count)
    full=$(metric mnemo_embed_queue_full_total)
    drain_s=$(echo "$drained - $load_end" | bc)
    echo
    echo "items appended: $appended; embedded by the end of the load: ${at_end%.*} (queue depth ${depth%.*})"
    echo "all embedded ${drain_s%.*} s after the load (strong search succeeded); texts embedded: ${embedded%.*} in ${batches%.*} batches"
    echo "model time: ${model_s} s => $(echo "scale=1; $embedded / $model_s" | bc) texts per busy second; offers dropped into backfill scans: ${full%.*}"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
done
