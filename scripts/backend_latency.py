#!/usr/bin/env python
"""Per-patch CPU latency of every backend and precision on random-initialised networks.

Usage: python scripts/backend_latency.py [--case cpu:32x64x64:2 --case default:64x64x64:1]
       [--rounds 7] [--threads N] [--no-bf16] [--json out.json]

To see what a CPU without AVX-512 would give on an AVX-512 machine, cap oneDNN (which computes
OpenVINO's and torch's convolutions) and OpenVINO's own kernels at AVX2 and leave bf16 out:
``ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 python scripts/backend_latency.py --no-bf16``.
ONNX Runtime's own kernels take no such cap, so it keeps AVX-512 there: a conservative
comparison for OpenVINO. The report lists the convolution kernels OpenVINO compiled, so the cap
can be seen to hold.

For each case (network preset, patch, batch) the network is built by ``build_network`` at a
fixed seed, exported by the compression stage's ``export_onnx``, quantized to an OpenVINO INT8
IR by NNCF on a few random calibration patches (ranges do not change the speed), and then timed:
ONNX Runtime fp32, OpenVINO fp32, bf16 (where the CPU has it natively), INT8 (other layers fp32,
and bf16 where native) and eager torch fp32. The backends are timed in turns (A B C A B C ...),
each timed call right after an untimed one, so load from other jobs on a shared machine hits all
alike; the table gives the median of ``--rounds`` timed calls divided by the batch size.
Results: docs/measurements/openvino_latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor
from edgepanc.backends.openvino_backend import (
    OpenVinoPredictor,
    machine_cpu_flags,
    native_bf16_problem,
    usable_cores,
)
from edgepanc.backends.torch_backend import TorchPredictor
from edgepanc.doctor import X86_FEATURES, probe_cpu
from edgepanc.networks import build_network
from edgepanc.quantization.onnx_export import export_onnx
from edgepanc.quantization.openvino_int8 import OpenVinoInt8Config, quantize_openvino_int8

Runner = Callable[[np.ndarray], object]


@dataclass(frozen=True)
class Case:
    """One row of the table: a network preset, its patch and the batch it runs in."""

    preset: str
    patch: tuple[int, int, int]
    batch: int

    @classmethod
    def parse(cls, text: str) -> Case:
        """``"cpu:32x64x64:2"`` -> ``Case("cpu", (32, 64, 64), 2)``."""
        preset, patch, batch = text.split(":")
        d, h, w = (int(s) for s in patch.split("x"))
        return cls(preset, (d, h, w), int(batch))

    def label(self) -> str:
        return f"`{self.preset}` preset, {'x'.join(map(str, self.patch))}, batch {self.batch}"


def build_runners(
    case: Case, folder: Path, threads: int, calibration: int, bf16: bool = True
) -> dict[str, Runner]:
    """Every backend and precision this machine runs, for the network of ``case``."""
    torch.manual_seed(0)
    network = build_network(case.preset).eval()
    onnx_path = export_onnx(network, folder / f"{case.preset}.onnx", case.patch)
    rng = np.random.default_rng(1)
    patches = rng.standard_normal((calibration, 1, *case.patch), dtype=np.float32)
    int8_path = quantize_openvino_int8(
        onnx_path, folder / f"{case.preset}_int8.xml", patches, OpenVinoInt8Config()
    )
    runners: dict[str, Runner] = {
        "ORT fp32": OnnxRuntimePredictor(onnx_path, intra_op_threads=threads),
        "OpenVINO fp32": OpenVinoPredictor(onnx_path, "fp32", threads=threads),
    }
    native_bf16 = bf16 and native_bf16_problem(machine_cpu_flags()) is None
    if native_bf16:
        runners["OpenVINO bf16"] = OpenVinoPredictor(onnx_path, "bf16", threads=threads)
    runners["OpenVINO INT8 (rest fp32)"] = OpenVinoPredictor(int8_path, "int8", threads=threads)
    if native_bf16:
        runners["OpenVINO INT8 (rest bf16)"] = OpenVinoPredictor(
            int8_path, "int8", threads=threads, float_precision="bf16"
        )
    runners["torch fp32"] = TorchPredictor(network, "cpu", "fp32")
    return runners


def convolution_kernels(runners: Mapping[str, Runner]) -> dict[str, list[str]]:
    """The kernels OpenVINO compiled for each runner's convolutions (``primitiveType``, e.g.
    ``brgconv_avx512_amx`` or ``jit_avx2``): which instruction set really ran."""
    kernels: dict[str, list[str]] = {}
    for name, runner in runners.items():
        compiled = getattr(runner, "compiled", None)
        if compiled is None:
            continue
        found = {
            op.get_rt_info()["primitiveType"].astype(str)
            for op in compiled.get_runtime_model().get_ops()
            if op.get_rt_info()["layerType"].astype(str) == "Convolution"
        }
        kernels[name] = sorted(found)
    return kernels


def time_in_turns(
    runners: Mapping[str, Runner], batch: np.ndarray, rounds: int
) -> dict[str, float]:
    """Median milliseconds per patch: ``rounds`` turns over all runners, untimed call then timed."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            run(batch)  # settles caches and other engines' spinning threads
            start = time.perf_counter()
            run(batch)
            times[name].append((time.perf_counter() - start) * 1000.0 / len(batch))
    return {name: statistics.median(values) for name, values in times.items()}


def machine_description() -> dict[str, object]:
    cpu = probe_cpu()
    features = cpu.get("features")
    flags = sorted(n for n in X86_FEATURES if isinstance(features, dict) and features.get(n))
    return {
        "cpu": cpu.get("model"),
        "flags": flags,
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--case", action="append", type=Case.parse, dest="cases")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--calibration-patches", type=int, default=4)
    parser.add_argument("--no-bf16", action="store_true", help="leave the bf16 variants out")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    cases = args.cases or [Case("cpu", (32, 64, 64), 2), Case("default", (64, 64, 64), 1)]
    torch.set_num_threads(args.threads)

    import onnxruntime
    import openvino

    versions = {
        "openvino": openvino.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }
    results: dict[str, dict[str, float]] = {}
    kernels: dict[str, dict[str, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="edgepanc-latency-") as scratch:
        for case in cases:
            runners = build_runners(
                case, Path(scratch), args.threads, args.calibration_patches, not args.no_bf16
            )
            kernels[case.label()] = convolution_kernels(runners)
            batch = np.random.default_rng(0).standard_normal(
                (case.batch, 1, *case.patch), dtype=np.float32
            )
            results[case.label()] = time_in_turns(runners, batch, args.rounds)
            print(
                f"{case.label()}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in results[case.label()].items()),
                file=sys.stderr,
            )
    names = list(dict.fromkeys(name for row in results.values() for name in row))
    print(f"| network, patch (ms/patch, median of {args.rounds}) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, row in results.items():
        cells = [f"{row[n]:.1f}" if n in row else "-" for n in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    report = {
        "machine": machine_description(),
        "versions": versions,
        "threads": args.threads,
        "rounds": args.rounds,
        "ms_per_patch": results,
        "openvino_convolution_kernels": kernels,
        "isa_cap": {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA")},
    }
    print(json.dumps(kernels))
    print(json.dumps(report["machine"]) + " " + json.dumps(versions))
    if args.json:
        from edgepanc.io.atomic import write_json_atomic

        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
