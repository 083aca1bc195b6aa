#!/usr/bin/env bash
# Cluster benchmark: failover time over KILLS kills (kill -9 of a node to the first
# acknowledged write on a shard it owned), the cost of one forwarding hop (owner vs non-owner
# latency), kv-put throughput of a single server, a 1-node and a 3-node cluster (mnemo-bench
# load, 64 clients, SECONDS each), the idle memory of an open shard, and SQL over shards
# (tenant-wide queries on a 3-node cluster against a single server with the same data), and a
# full research export job on each of them. Everything on this
# machine: etcd (Debian's etcd-server), the nodes, one shared store in a local directory.
#   bash scripts/bench-cluster.sh [kills] [seconds]      (env: PHASES, TTL (10), SHARDS (64))
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p mnemo -p mnemo-bench >/dev/null
export MNEMO_BIN_DIR=${CARGO_TARGET_DIR:-target}/release
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || { apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; }
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
exec python3 scripts/bench_cluster.py "${1:-10}" "${2:-15}"
