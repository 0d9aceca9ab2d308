#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: a virtual environment in .venv with edgepanc and its dev extras.
# Reuses .venv when it exists; pip skips what is already installed.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"
