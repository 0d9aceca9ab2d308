#!/usr/bin/env bash
# The test command of the README: a virtual environment with the dev extras, lint, the fast test
# suite, then the short speed gates of bench/. Works on a fresh clone; reuses .venv if present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q tests
if [ -d bench ] && ls bench/test_*.py >/dev/null 2>&1; then
  .venv/bin/python -m pytest -q bench -m gate --benchmark-disable-gc
fi
