#!/usr/bin/env bash
# Variants of the CPU training recipe side by side on one lent GPU, at the recipe's own step
# budget (88 x 50 steps of batch 2), to choose what the 45-minute CPU run should try; and, on
# that machine's CPU, the compression stage of a trained CPU-recipe bundle (INT8 on a CPU with
# AVX-512 VNNI, which the project's own machine lacks).
# Usage: OUT=folder BUNDLE=trained_bundle bash scripts/gpu_recipe_sweep.sh  (SimpleITK wheel in .whl/)
# Figures are indicative for the CPU run: same data, flags and steps, but CUDA kernels, not CPU ones.
set -u
OUT=${OUT:-sweep_out}; BUNDLE=${BUNDLE:-}; DEADLINE=${DEADLINE:-430}
mkdir -p "$OUT" /tmp/sweep
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
if ! python3 -c "import SimpleITK" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,temperature.gpu --format=csv,noheader
  lscpu | grep -E "^Model name|^CPU\(s\)|^Thread"
  for f in avx512_vnni avx512_bf16 amx_int8 avx_vnni; do grep -qw $f /proc/cpuinfo && echo "cpu flag $f"; done
  python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
} > "$OUT/machine.txt" 2>&1
t0=$SECONDS
python3 -m edgepanc synth --out /tmp/sweep/data --cases 100 --size quiz --seed 0 --quiet
echo "synth: $((SECONDS - t0)) s" >> "$OUT/machine.txt"
COMMON=(--data /tmp/sweep/data --preset cpu --target-spacing 2.0,1.2,1.2 --patch-size 32,64,64
  --batch-size 2 --epochs 88 --steps-per-epoch 50 --val-every 44 --lesion-dice sample --cls-weight 1.0
  --threads 1 --device cuda --no-amp)
variant() { local name=$1; shift
  taskset -c 0-11 timeout "$DEADLINE" python3 -m edgepanc train "${COMMON[@]}" --out "/tmp/sweep/$name" "$@" \
    > "/tmp/sweep/$name.log" 2>&1; echo "$name rc $? $((SECONDS - t0)) s" >> "$OUT/machine.txt"; }
variant base --seed 0 &
variant base_seed1 --seed 1 &
variant lesion33 --seed 0 --lesion-fraction 0.33 --pancreas-fraction 0.33 &
variant lesion40 --seed 0 --lesion-fraction 0.4 --pancreas-fraction 0.4 &
variant deepsup --seed 0 --deep-supervision &
variant fine16 --seed 0 --target-spacing 1.6,1.0,1.0 &
variant teacher25 --seed 0 --teacher-forcing 0.25 --cls-weight 2.0 &
variant lesion33_deepsup --seed 0 --lesion-fraction 0.33 --pancreas-fraction 0.33 --deep-supervision &
summarise() { python3 - "$@" <<'PY' > "$OUT/sweep.txt"
import json, pathlib
for log in sorted(pathlib.Path("/tmp/sweep").glob("*/metrics.jsonl")):
    rows = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    last = rows[-1] if rows else {}
    print(f"== {log.parent.name}: {len(rows)} epochs, last seg {last.get('seg_loss', float('nan')):.3f} cls {last.get('cls_loss', float('nan')):.3f} {last.get('seconds', 0):.1f} s/epoch")
    for r in rows:
        if r.get("whole_dsc") is not None:
            print(f"  epoch {r['epoch']}: whole {r['whole_dsc']:.4f} lesion {r['lesion_dsc']:.4f} f1 {r['macro_f1']:.4f} acc {r['accuracy']:.3f} confusion {r.get('confusion')}")
PY
}
if [ -n "$BUNDLE" ]; then
  ( taskset -c 12-15 env OMP_NUM_THREADS=4 python3 -m edgepanc quantize --model "$BUNDLE" --data /tmp/sweep/data \
      --out /tmp/sweep/q --int8 ptq --export onnx,int8 --calibration-method minmax --max-validation-cases 6 \
      > /tmp/sweep/quantize.log 2>&1
    echo "quantize rc $? $((SECONDS - t0)) s" >> "$OUT/machine.txt"
    cp /tmp/sweep/q/quantization.md "$OUT/" 2>/dev/null
    taskset -c 12-15 python3 -m edgepanc run /tmp/sweep/data/validation --model /tmp/sweep/q --out /tmp/sweep/qpred \
      > /tmp/sweep/qrun.log 2>&1 && python3 -m edgepanc evaluate --pred /tmp/sweep/qpred --gt /tmp/sweep/data >> /tmp/sweep/qrun.log 2>&1
    tail -c 6000 /tmp/sweep/quantize.log > "$OUT/quantize_tail.log"; tail -c 4000 /tmp/sweep/qrun.log > "$OUT/run_auto.log" ) &
fi
while [ "$(jobs -r | wc -l)" -gt 0 ]; do summarise; sleep 15; done
summarise
for f in /tmp/sweep/*.log; do echo "== $f"; tail -n 3 "$f"; done > "$OUT/logs_tail.txt" 2>&1
