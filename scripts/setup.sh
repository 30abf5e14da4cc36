#!/usr/bin/env bash
# Idempotent set-up: a local venv at .venv with bench installed (editable) and its test extra.
# Usage: bash scripts/setup.sh    (re-running is cheap: it skips the install when pyproject.toml is unchanged)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.bench-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch first, pinned to the build that lies on this machine's disk (x86_64); aarch64 takes the CPU build.
if [ "$(uname -m)" = "x86_64" ]; then
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
else
  .venv/bin/python -m pip install -q "torch==2.9.1" "torchvision==0.24.1"
fi
.venv/bin/python -m pip install -q -e ".[test]"
echo "$want" > "$stamp"
