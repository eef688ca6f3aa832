#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then the demo (extra arguments go to `fedvla demo`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec fedvla demo "$@"
