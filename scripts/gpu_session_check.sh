#!/usr/bin/env bash
# One pass over every CUDA path, for a lent GPU machine (no network there, PyTorch preinstalled).
# Usage: OUT=/some/folder bash scripts/gpu_session_check.sh  (SimpleITK wheel in .whl/ if missing)
# Each step has its own time limit so that one hang does not cost the others; logs go to $OUT.
set -u
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import SimpleITK" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/steps.log" | tail -n 25; echo "--- $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s"; }
nvidia-smi --query-gpu=name,driver_version,temperature.gpu,memory.total --format=csv
step doctor 60 python3 -m edgepanc doctor
step latency_b1 120 python3 scripts/gpu_latency_check.py --patch 128,128,128 --runs 20 --batch 1
step latency_b4 120 python3 scripts/gpu_latency_check.py --patch 128,128,128 --runs 10 --batch 4
step train_step_amp 120 python3 scripts/train_cuda_check.py --steps 120 --batch-size 2 --patch-size 64,128,128
step train_step_fp32 120 python3 scripts/train_cuda_check.py --steps 60 --batch-size 2 --patch-size 64,128,128 --no-amp
step synth 120 python3 -m edgepanc synth --out /tmp/gd --cases 24 --size quiz --seed 0
step train 240 python3 -m edgepanc train --data /tmp/gd --out /tmp/gr --device cuda --set preset=default \
  --set patch_size=64,96,96 --set batch_size=4 --set epochs=6 --set steps_per_epoch=40 --set val_every=3 --require-thermal
cp /tmp/gr/metrics.jsonl /tmp/gr/curves.png "$OUT/" 2>/dev/null
step ddp 180 torchrun --nproc-per-node 1 -m edgepanc train --data /tmp/gd --out /tmp/gr_ddp --device cuda \
  --set preset=cpu --set patch_size=32,64,64 --set epochs=2 --set steps_per_epoch=10 --set val_every=2
step run_cuda 120 python3 -m edgepanc run /tmp/gd/test --model /tmp/gr --out /tmp/go --backend torch \
  --device cuda --precision fp16 --roi off
cp "$(ls /tmp/go/*.json | head -1)" "$OUT/case_cuda.json" 2>/dev/null
step run_auto 120 python3 -m edgepanc run /tmp/gd/test --model /tmp/gr --out /tmp/go_auto
step tests 180 python3 -m pytest -q -x tests/test_backends.py tests/test_thermal.py -p no:cacheprovider
