#!/usr/bin/env python
"""The OpenVINO engine's own memory per input voxel, for the run's memory planner.

Usage: python scripts/openvino_memory.py [--preset cpu] [--patch 32x64x64] [--batches 1 2 4]
       [--members 1 2 3] [--json out.json]

The network (``build_network(preset)``, fixed seed) is exported by the compression stage's
``export_onnx`` and quantized to an NNCF INT8 IR. Then, for each precision (fp32; bf16 where the
CPU has it natively; INT8) and tile batch, a fresh process (torch never loaded) imports
OpenVINO, reads its resident memory, compiles the model, runs one batch and reads it again: the
difference is what the engine holds (weights, compiled kernels, intermediate buffers). Printed
per input voxel of the batch beside the torch-measured activation footprint the planner uses
(``activation_bytes_per_voxel`` x ``ACTIVATION_SAFETY``). With ``--members``, the same for an
ensemble of that many networks (other seeds, other files) averaged by ``EnsemblePredictor``.
Results: docs/measurements/openvino_quantize.md, docs/measurements/ensemble_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgepanc.backends.openvino_backend import machine_cpu_flags, native_bf16_problem
from edgepanc.networks import build_network
from edgepanc.networks.activation import network_activation_bytes_per_voxel
from edgepanc.quantization.onnx_export import export_onnx
from edgepanc.quantization.openvino_int8 import OpenVinoInt8Config, quantize_openvino_int8
from edgepanc.runtime.budget import ACTIVATION_SAFETY

CHILD = """
import sys, numpy as np, psutil
import openvino
from edgepanc.backends.openvino_backend import OpenVinoPredictor
from edgepanc.inferers.ensemble import EnsemblePredictor
precision, batch, patch, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
shape = (batch, 1, *map(int, patch.split("x")))
tile = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
process = psutil.Process()
before = process.memory_info().rss
members = [OpenVinoPredictor(path, precision) for path in paths]
predictor = members[0] if len(members) == 1 else EnsemblePredictor(members)
compiled = process.memory_info().rss
predictor(tile)
after = process.memory_info().rss
print(before, compiled, after, "torch" in sys.modules)
"""


def measure(paths: list[Path], precision: str, batch: int, patch: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, precision, str(batch), patch, *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    before, compiled, after, torch_loaded = done.stdout.split()[-4:]
    assert torch_loaded == "False", "the OpenVINO path loaded torch"
    return {
        "compile_bytes": int(compiled) - int(before),
        "engine_bytes": int(after) - int(before),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--patch", default="32x64x64")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--members", type=int, nargs="+", default=[1])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    patch = tuple(int(p) for p in args.patch.split("x"))
    models = []
    for seed in range(max(args.members)):
        torch.manual_seed(seed)
        models.append(build_network(args.preset).eval())
    activation = network_activation_bytes_per_voxel(models[0].config, patch)
    precisions = ["fp32", "int8"]
    if native_bf16_problem(machine_cpu_flags()) is None:
        precisions.insert(1, "bf16")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files: dict[str, list[Path]] = {"fp32": [], "int8": []}
        calibration = np.random.default_rng(0).standard_normal((8, 1, *patch), dtype=np.float32)
        for index, model in enumerate(models):
            onnx = export_onnx(model, Path(folder) / f"model{index}.onnx", patch)
            files["fp32"].append(onnx)
            files["int8"].append(
                quantize_openvino_int8(
                    onnx,
                    Path(folder) / f"int8_{index}.xml",
                    calibration,
                    OpenVinoInt8Config(subset_size=8),
                )
            )
        for precision in precisions:
            for members in args.members:
                for batch in args.batches:
                    paths = files["int8" if precision == "int8" else "fp32"][:members]
                    figures = measure(paths, precision, batch, args.patch)
                    voxels = batch * math.prod(patch)
                    rows.append(
                        {
                            "precision": precision,
                            "members": members,
                            "batch": batch,
                            **figures,
                            "engine_bytes_per_voxel": figures["engine_bytes"] / voxels,
                            "planned_bytes_per_voxel": ACTIVATION_SAFETY * activation,
                        }
                    )
    print(
        f"{args.preset} preset, patch {args.patch}; torch-measured activations {activation:.1f} B/voxel"
    )
    print(
        "| precision | members | batch | compile MB | compile + 1 batch MB | engine B/voxel "
        "| planned B/voxel |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['precision']} | {row['members']} | {row['batch']} | "
            f"{row['compile_bytes'] / 1e6:.1f} | "
            f"{row['engine_bytes'] / 1e6:.1f} | {row['engine_bytes_per_voxel']:.1f} | "
            f"{row['planned_bytes_per_voxel']:.1f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"activation_bytes_per_voxel": activation, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
