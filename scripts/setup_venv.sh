#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: a virtual environment in .venv with edgepanc and its dev extras.
# Reuses .venv when it exists; pip skips what is already installed.
PY=${PYTHON:-python3}
# A full disk otherwise surfaces as an opaque ensurepip or pip failure half-way through the set-up.
need_gb=1
[ -x .venv/bin/python ] || need_gb=3
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
  echo "set-up: $PWD: only $((free_kb / 1024)) MiB free on its disk; the virtual environment" \
    "(torch, OpenVINO, ONNX Runtime) and the tests need about $need_gb GiB" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The exact torch first: on the project's machines 2.13.0 is the CPU build on local disk, whereas
# the package's range (torch>=2.5) alone would let pip pull a multi-GB CUDA build from the index.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"
