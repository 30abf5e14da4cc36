#!/usr/bin/env bash
# Idempotent set-up: a local venv at .venv with bench installed (editable) and its test extra.
# Usage: bash scripts/setup.sh    (cheap to re-run: it skips the install while pyproject.toml and setup.py are unchanged)
# The install goes through uv (unpacks the ~5 GB of torch wheels in parallel: ~30 s instead of pip's ~100 s on a
# 2-core machine); where uv cannot be had, or BENCH_SETUP_PIP=1, through pip, which resolves the same versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.bench-installed
# the editable install maps packages from both files (setup.py: hydra_plugins/, the configs): either changed, reinstall
want=$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# torch first, pinned to the build that lies on this machine's disk (x86_64); aarch64 takes the CPU build.
if [ "$(uname -m)" = "x86_64" ]; then
  torch=("torch==2.14.1" "torchvision==0.29.1")
else
  torch=("torch==2.9.1" "torchvision==0.24.1")
fi
pip=(.venv/bin/python -m pip install -q)
if [ "${BENCH_SETUP_PIP:-0}" != 1 ] && "${pip[@]}" uv >/dev/null 2>&1; then
  # uv reads neither pip's config nor its local wheel directories: name the directories that hold torch's wheels
  links=()
  for dir in /opt/pypi-more/files /opt/wheels; do
    [ -d "$dir" ] && links+=(--find-links "$dir")
  done
  # --compile-bytecode: as pip does; without it every process compiles what it imports (PYTHONDONTWRITEBYTECODE)
  .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "${links[@]}" "${torch[@]}" -e ".[test]"
else
  "${pip[@]}" --upgrade pip >/dev/null
  "${pip[@]}" "${torch[@]}"
  "${pip[@]}" -e ".[test]"
fi
echo "$want" > "$stamp"
