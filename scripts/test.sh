#!/usr/bin/env bash
# The test suite, on a fresh machine: set up .venv, then pytest (extra arguments go to pytest). The tests that start
# federations spend most of their time waiting on polls and process starts, so FEDVLA_TEST_WORKERS=N runs them on N
# pytest-xdist workers, each taking whole modules (a module's federation fixture is its own; the container module is
# collected first, so its image build starts at once). The default, 0, runs serially until a parallel run of the
# whole suite has been measured.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec python -m pytest -q -n "${FEDVLA_TEST_WORKERS:-0}" --dist loadfile "$@"
