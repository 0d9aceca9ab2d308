#!/usr/bin/env bash
# Variants of the CPU training recipe side by side on one lent GPU, at the recipe's own step
# budget (88 x 50 steps of batch 2), to choose what the 45-minute CPU run should try. Each run
# is scored twice: on the 12 validation phantoms (training's own validation, epochs 44 and 88)
# and, from its last checkpoint, on 48 fresh phantoms (scripts/score_bundle.py), where macro F1
# moves less between seeds.
# Usage: OUT=folder bash scripts/gpu_recipe_sweep.sh   (SimpleITK wheel in .whl/ if not installed)
# Optional: VARIANTS=file with one "name flags..." line per run (default: the list below);
# DEADLINE=seconds per training run; WORKERS=patch-sampling processes per run; a smoke test of
# the script itself on a CPU: DEVICE=cpu EPOCHS=2 STEPS=2 VAL_EVERY=1 CASES=12 FRESH_CASES=6.
# Figures are indicative for the CPU run: same data, flags and steps, but CUDA kernels, not CPU
# ones, and the batches come from a background worker (another random stream than --workers 0).
set -u
OUT=${OUT:-sweep_out}; DEADLINE=${DEADLINE:-430}; WORKERS=${WORKERS:-1}; VARIANTS=${VARIANTS:-}
DEVICE=${DEVICE:-cuda}; EPOCHS=${EPOCHS:-88}; STEPS=${STEPS:-50}; VAL_EVERY=${VAL_EVERY:-44}
CASES=${CASES:-100}; FRESH_CASES=${FRESH_CASES:-48}
mkdir -p "$OUT" /tmp/sweep
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
if ! python3 -c "import SimpleITK" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,temperature.gpu --format=csv,noheader
  lscpu | grep -E "^Model name|^CPU\(s\)"
  python3 -c "import torch; print('torch', torch.__version__)"
} > "$OUT/machine.txt" 2>&1
t0=$SECONDS
CORES=$(nproc)
python3 -m edgepanc synth --out /tmp/sweep/data --cases "$CASES" --size quiz --seed 0 --quiet --workers "$CORES" &
python3 -m edgepanc synth --out /tmp/sweep/fresh --cases "$FRESH_CASES" --size quiz --seed 11 --quiet --workers "$CORES"
wait
echo "synth: $((SECONDS - t0)) s" >> "$OUT/machine.txt"
COMMON=(--data /tmp/sweep/data --set preset=cpu --set target_spacing=2.0,1.2,1.2 --set patch_size=32,64,64
  --set batch_size=2 --set epochs="$EPOCHS" --set steps_per_epoch="$STEPS" --set val_every="$VAL_EVERY" --set lesion_dice=sample --set cls_weight=1.0
  --threads 1 --device "$DEVICE" --set amp=false --workers "$WORKERS")
if [ -z "$VARIANTS" ]; then
  VARIANTS=/tmp/sweep/variants.txt
  cat > "$VARIANTS" <<'LIST'
base --seed 0
base_s1 --seed 1
clean_tf0 --seed 0 --set head_statistics=clean --set teacher_forcing_end=0
clean_tf0_s1 --seed 1 --set head_statistics=clean --set teacher_forcing_end=0
clean --seed 0 --set head_statistics=clean
tf0 --seed 0 --set teacher_forcing_end=0
clean_tf0_les70 --seed 0 --set head_statistics=clean --set teacher_forcing_end=0 --set lesion_fraction=0.7 --set pancreas_fraction=0.2
clean_tf0_les70_s1 --seed 1 --set head_statistics=clean --set teacher_forcing_end=0 --set lesion_fraction=0.7 --set pancreas_fraction=0.2
LIST
fi
variant() { local name=$1; shift
  timeout "$DEADLINE" python3 -m edgepanc train "${COMMON[@]}" --out "/tmp/sweep/$name" "$@" \
    > "/tmp/sweep/$name.log" 2>&1; echo "$name train rc $? $((SECONDS - t0)) s" >> "$OUT/machine.txt"
  local weights=/tmp/sweep/$name/last.pt
  python3 scripts/score_bundle.py "/tmp/sweep/$name" /tmp/sweep/fresh --weights "$weights" \
    --device "$DEVICE" --out "/tmp/sweep/$name.fresh.json" > "/tmp/sweep/$name.fresh.log" 2>&1
  echo "$name fresh rc $? $((SECONDS - t0)) s" >> "$OUT/machine.txt"; }
while read -r name flags; do
  [ -n "$name" ] || continue
  # shellcheck disable=SC2086  # flags are words
  variant "$name" $flags < /dev/null &
done < "$VARIANTS"
summarise() { python3 - <<'PY' > "$OUT/sweep.txt"
import json, pathlib
root = pathlib.Path("/tmp/sweep")
for log in sorted(root.glob("*/metrics.jsonl")):
    name = log.parent.name
    rows = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    last = rows[-1] if rows else {}
    print(f"== {name}: {len(rows)} epochs, last seg {last.get('seg_loss', float('nan')):.3f} "
          f"cls {last.get('cls_loss', float('nan')):.3f} {last.get('seconds', 0):.1f} s/epoch")
    for r in rows:
        if r.get("whole_dsc") is not None:
            print(f"  epoch {r['epoch']} (validation split): whole {r['whole_dsc']:.4f} lesion {r['lesion_dsc']:.4f} "
                  f"f1 {r['macro_f1']:.4f} acc {r['accuracy']:.3f} confusion {r.get('confusion')}")
    fresh = root / f"{name}.fresh.json"
    if fresh.exists():
        s = json.loads(fresh.read_text())
        print(f"  last.pt (fresh phantoms): whole {s['whole_dsc']:.4f} lesion {s['lesion_dsc']:.4f} "
              f"f1 {s['macro_f1']:.4f} acc {s['accuracy']:.3f} confusion {s.get('confusion')} {s['seconds']} s")
PY
}
# Summarised every few seconds, so a call cut off by its time limit still brings back nearly all.
while [ "$(jobs -r | wc -l)" -gt 0 ]; do summarise; sleep 5; done
summarise
for f in /tmp/sweep/*.log; do echo "== $f"; tail -n 3 "$f"; done > "$OUT/logs_tail.txt" 2>&1
