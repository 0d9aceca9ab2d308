#!/usr/bin/env python
"""Per-patch latency of the default (~23M) network on CUDA: fp32, fp16, bf16 and TensorRT.

Usage: python scripts/gpu_latency_check.py [--patch 128,128,128] [--runs 20] [--batch 1]

Prints one table row per precision (median and min ms per patch over ``--runs`` timed calls after
warm-up). TensorRT rows appear where torch-tensorrt is installed. Without CUDA it says so and
exits with status 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 3) -> list[float]:
    """Milliseconds per call; CUDA is synchronised so the GPU work is inside each timing."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def eager_runner(
    model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None
) -> Callable[[], object]:
    def run() -> object:
        with (
            torch.inference_mode(),
            torch.amp.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            return model(x)

    return run


def tensorrt_runners(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """fp16 TensorRT through torch-tensorrt's dynamo path; empty (with a note) when missing."""
    try:
        import torch_tensorrt
    except ImportError:
        print("note: torch-tensorrt is not installed: no TensorRT rows", file=sys.stderr)
        return {}
    compiled = torch_tensorrt.compile(
        model, ir="dynamo", inputs=[x], enabled_precisions={torch.float16, torch.float32}
    )

    def run() -> object:
        with torch.inference_mode():
            return compiled(x)

    return {"tensorrt fp16": run}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", default="128,128,128", help="patch size z,y,x (multiples of 32)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check times the network on an NVIDIA GPU; nothing to do here")
        return 1
    from edgepanc.networks import build_network, count_parameters

    patch = tuple(int(v) for v in args.patch.split(","))
    model = build_network("default").cuda().eval()
    x = torch.randn(args.batch, 1, *patch, device="cuda")
    runners = {
        "torch fp32": eager_runner(model, x, None),
        "torch fp16": eager_runner(model, x, torch.float16),
        "torch bf16": eager_runner(model, x, torch.bfloat16),
        **tensorrt_runners(model, x),
    }
    print(
        f"{torch.cuda.get_device_name()} | default network, {count_parameters(model):,} parameters | "
        f"batch {args.batch} x patch {patch}"
    )
    print(f"{'precision':<16}{'median ms':>12}{'min ms':>10}{'ms/patch':>10}")
    for name, run in runners.items():
        times = time_calls(run, args.runs)
        median = statistics.median(times)
        print(f"{name:<16}{median:>12.2f}{min(times):>10.2f}{median / args.batch:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
