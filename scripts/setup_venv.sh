#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: a virtual environment in .venv with edgepanc and its dev extras.
# Reuses .venv when it exists; pip skips what is already installed.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The exact torch first: on the project's machines 2.13.0 is the CPU build on local disk, whereas
# the package's range (torch>=2.5) alone would let pip pull a multi-GB CUDA build from the index.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"
