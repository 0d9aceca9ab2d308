#!/usr/bin/env bash
# The test command of the README: lint, the fast test suite, then the short speed gates of bench/.
# Works on a fresh clone (it creates .venv) and on a working copy (it reuses .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
ruff check .
python -m pytest -q tests
python -m pytest -q bench -m gate --benchmark-disable-gc
