#!/usr/bin/env bash
# Creates .venv with the locked dependencies (uv.lock). Sourced by demo.sh and test.sh; safe to run again.
# Needs Python 3.12 (LeRobot 0.6 requires it) and the package index; nothing else.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

find_python() {
  local candidates=("${FEDVLA_PYTHON:-}" python3.12 python3)
  # pyenv installs need PYENV_VERSION for their shims; look at its versions directly as well.
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12)
  fi
  for candidate in "${candidates[@]}"; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; then
      command -v "$candidate" 2>/dev/null || echo "$candidate"
      return 0
    fi
  done
  return 1
}

PYTHON="$(find_python)" || {
  echo "setup: Python 3.12 not found. Install it (e.g. 'apt install python3.12', 'brew install python@3.12'," >&2
  echo "       'pyenv install 3.12' or 'uv python install 3.12') or set FEDVLA_PYTHON=/path/to/python3.12." >&2
  exit 1
}

# uv from PATH if it runs, else a private copy in .tools/ (pip into a venv works even on PEP 668 systems).
if uv --version >/dev/null 2>&1; then
  UV=(uv)
else
  if [ ! -x "$ROOT/.tools/bin/uv" ]; then
    "$PYTHON" -m venv "$ROOT/.tools"
    "$ROOT/.tools/bin/python" -m pip install --quiet --disable-pip-version-check uv
  fi
  UV=("$ROOT/.tools/bin/uv")
fi
# Use the system's certificate store, so TLS-intercepting proxies with a local CA work as they do for pip.
export UV_NATIVE_TLS="${UV_NATIVE_TLS:-1}"
(cd "$ROOT" && "${UV[@]}" sync --frozen --quiet --python "$PYTHON")
export PATH="$ROOT/.venv/bin:$PATH"
