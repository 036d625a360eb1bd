#!/usr/bin/env bash
# Install the Debian/Ubuntu packages Cleanroom needs, only those missing (idempotent).
#   chromium    - headless browser for the portal's browser tests
#   nodejs, npm - run configurable-http-proxy, JupyterHub's proxy
#   postgresql  - the production database, used by the test suite
#   python3-venv - the researchers' notebook environment (.venv-notebook), built from the
#                 system Python every user can run
set -euo pipefail

packages=(chromium nodejs npm postgresql python3-venv)
missing=()
for p in "${packages[@]}"; do
  # A tool already on PATH (e.g. a newer Node.js from elsewhere) counts as present.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system packages: all present (${packages[*]})"
  exit 0
fi

echo "system packages: installing ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "error: need root to install ${missing[*]}; run: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
