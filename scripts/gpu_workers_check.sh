#!/usr/bin/env bash
# Training pace on a lent GPU with the patch sampler in the training process (--workers 0) and in
# background workers. Usage: OUT=folder bash scripts/gpu_workers_check.sh  (SimpleITK wheel in .whl/)
set -u
OUT=${OUT:-workers_out}; mkdir -p "$OUT" /tmp/wk
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import SimpleITK" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
python3 -m edgepanc synth --out /tmp/wk/data --cases 24 --size quiz --seed 0 --quiet
pace() { local name=$1; shift; local t0=$SECONDS
  timeout 150 python3 -m edgepanc train --data /tmp/wk/data --out "/tmp/wk/$name" --device cuda \
    --set epochs=2 --set val_every=100 --seed 0 "$@" > "/tmp/wk/$name.log" 2>&1
  echo "$name: rc $? wall $((SECONDS - t0)) s; $(python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print('train s per epoch', [round(x['train_s'],1) for x in r], 'loss', [round(x['loss'],3) for x in r])" "/tmp/wk/$name/metrics.jsonl" 2>&1)"; }
{
pace cpu_w0 --set preset=cpu --set patch_size=32,64,64 --set batch_size=2 --set steps_per_epoch=100 --workers 0
pace cpu_w6 --set preset=cpu --set patch_size=32,64,64 --set batch_size=2 --set steps_per_epoch=100 --workers 6
pace default_w0 --set preset=default --set patch_size=64,96,96 --set batch_size=4 --set steps_per_epoch=30 --workers 0
pace default_w8 --set preset=default --set patch_size=64,96,96 --set batch_size=4 --set steps_per_epoch=30 --workers 8
} | tee "$OUT/pace.txt"
tail -n 3 /tmp/wk/*.log > "$OUT/logs_tail.txt" 2>&1
