#!/usr/bin/env bash
# The demo of the README: the whole path on phantoms, end to end, in about ten minutes on two
# CPU cores: synth -> train (briefly) -> quantize -> run -> evaluate -> speed-up over the baseline.
# Outputs go to demo/<timestamp>/ (override with EDGEPANC_DEMO_DIR); the quantized bundle goes to
# the default bundle folder so that `edgepanc run SCAN` finds it afterwards without --model.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh

stamp=$(date +%Y%m%d-%H%M%S)
work=${EDGEPANC_DEMO_DIR:-demo}/$stamp
bundle_root=$(python -c 'from edgepanc.bundle import default_bundle_root; print(default_bundle_root())')
bundle=$bundle_root/demo-$stamp
mkdir -p "$work" "$bundle_root"
echo "== demo folder: $work"

echo "== 1/6 synth: phantom data set"
edgepanc synth --out "$work/data" --cases 24 --seed 0

echo "== 2/6 train: the demo recipe (train/demo.toml), briefly"
edgepanc train --data "$work/data" --out "$work/run" --recipe demo

echo "== 3/6 quantize: prune, INT8, ONNX export, report (quant/demo.toml)"
edgepanc quantize --model "$work/run" --data "$work/data" --out "$bundle" --recipe demo

echo "== 4/6 run: the optimised runtime on the validation scans (newest bundle, no --model)"
edgepanc run "$work/data/validation" --out "$work/pred"

echo "== 5/6 evaluate"
edgepanc evaluate --pred "$work/pred" --gt "$work/data" --split validation

echo "== 6/6 speed-up over the baseline (fp32 PyTorch, step 0.5, whole volume, one tile at a time)"
first_scan=$(find "$work/data/validation" -name '*_0000.nii.gz' | sort | head -n 1)
python scripts/demo_speedup.py "$first_scan" --model "$bundle"
echo "== done: $work (bundle: $bundle)"
