#!/usr/bin/env bash
# `mnemo sync` against rclone (Debian's 1.60) in one run: local directory -> S3 on loopback.
# The S3 server is s3s-fs (a Rust S3 server over a directory: it is not the bottleneck, moto
# is), built once into $TOOLS. Both tools run with the same --transfers; each syncs into its own
# bucket. Cases: (a) 10,000 x 4 KiB objects, (b) a second pass after 1 % of them changed,
# (c) 20 x 64 MiB objects. Prints a markdown table with the ratios.
#   bash scripts/bench-sync.sh [transfers]
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSFERS=${1:-4}
TOOLS=${TOOLS:-/var/tmp/mnemo-tools}
WORK=${WORK:-/var/tmp/mnemo-bench-sync}
cargo build --release --locked -p mnemo >/dev/null
MNEMO=${CARGO_TARGET_DIR:-target}/release/mnemo
if [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  # 0.14.1: the newest release that builds with this toolchain.
  CARGO_TARGET_DIR="$TOOLS/target" cargo install s3s-fs@0.14.1 --features binary --locked --root "$TOOLS" >/dev/null
  rm -rf "$TOOLS/target"
fi
command -v rclone >/dev/null || apt-get install -y -qq rclone >/dev/null
rm -rf "$WORK"; mkdir -p "$WORK/s3" "$WORK/src"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$WORK/s3" \
  >"$WORK/s3s.log" 2>&1 &
s3pid=$!
trap 'kill $s3pid 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
mkdir -p "$WORK/s3/rclone" "$WORK/s3/mnemo"   # s3s-fs: a bucket is a directory
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_VIRTUAL_HOSTED_STYLE_REQUEST=false
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT=http://127.0.0.1:$port
export RCLONE_CONFIG_S3_ACCESS_KEY_ID=bench RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=benchsecret
export RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true RCLONE_CONFIG_S3_REGION=us-east-1
# rclone 1.60 cannot load a custom CA bundle into its HTTP transport; loopback needs none.
unset AWS_CA_BUNDLE

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r); rclone $(rclone version | head -1 | awk '{print $2}'); s3s-fs 0.14.1; --transfers $TRANSFERS"
# Seconds a command takes (it must succeed).
secs() {
  local t0 t1; t0=$(date +%s%N)
  "$@" >/dev/null 2>>"$WORK/errors.log" || { echo "failed: $*" >&2; tail -5 "$WORK/errors.log" >&2; kill $$; }
  t1=$(date +%s%N); python3 -c "print(($t1 - $t0) / 1e9)"
}
ROWS=()
run_case() { # name objects bytes dir [destination prefix] [env for mnemo]
  local name=$1 n=$2 bytes=$3 dir=$4 to=${5:-$4} r m
  r=$(secs rclone sync "$WORK/src/$dir" "s3:rclone/$to" --transfers "$TRANSFERS")
  m=$(secs env ${6:-MNEMO_BENCH=1} "$MNEMO" sync "$WORK/src/$dir" "s3://mnemo/$to" --transfers "$TRANSFERS" ${MNEMO_SYNC_FLAGS:-})
  ROWS+=("$(python3 - "$name" "$n" "$bytes" "$r" "$m" <<'EOF'
import sys
name, n, b, r, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print(f"| {name} | {r:.2f} s ({n/r:,.0f} obj/s, {b/r/2**20:,.1f} MiB/s) | "
      f"{m:.2f} s ({n/m:,.0f} obj/s, {b/m/2**20:,.1f} MiB/s) | {r/m:.2f}x |")
EOF
)")
}
python3 - "$WORK/src" <<'EOF'
import os, sys
root = sys.argv[1]
for i in range(10_000):
    d = os.path.join(root, "small", f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(4096))
os.makedirs(os.path.join(root, "large"), exist_ok=True)
for i in range(20):
    with open(os.path.join(root, "large", f"big{i:02d}.bin"), "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
EOF
run_case "(a) 10,000 x 4 KiB" 10000 $((10000 * 4096)) small
sleep 1.1   # changed files get a newer modification time
python3 - "$WORK/src/small" <<'EOF'
import os, sys
root = sys.argv[1]
for i in range(0, 10_000, 100):          # 1 %: 100 files rewritten
    with open(os.path.join(root, f"d{i % 100:02d}", f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(4096))
EOF
run_case "(b) second pass, 1 % changed" 10000 $((100 * 4096)) small
run_case "(c) 20 x 64 MiB" 20 $((20 * 64 << 20)) large
for d in small large; do
  rclone check "$WORK/src/$d" "s3:mnemo/$d" >/dev/null 2>>"$WORK/errors.log" \
    && echo "rclone check: mnemo's copy of $d is identical to the source" \
    || { echo "rclone check: mnemo's copy of $d DIFFERS"; exit 1; }
done
rm -rf "$WORK/s3/rclone/large" "$WORK/s3/mnemo/large"   # room on the disk for the next case
# The same, mnemo's S3 requests without a SHA-256 of the body (AWS_UNSIGNED_PAYLOAD=true).
run_case "(c) again, mnemo with unsigned payloads" 20 $((20 * 64 << 20)) large large2 AWS_UNSIGNED_PAYLOAD=true
echo
echo "| case | rclone sync | mnemo sync | mnemo / rclone throughput |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo "((b): objects/s counts every object compared; MiB/s only the changed bytes)"
