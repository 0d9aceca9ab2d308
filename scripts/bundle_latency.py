#!/usr/bin/env python
"""Per-patch latency of every non-torch variant of a quantized bundle, as ``run`` builds them.

Usage: python scripts/bundle_latency.py BUNDLE [--batches 1 2] [--rounds 15]

Each variant's predictor comes from ``build_predictor`` (the runtime's own), the variants are
called in turns on one random tile batch of the bundle's patch (each timed call right after an
untimed one, so load from other jobs hits all alike), and the median per patch is printed with
its speed-up over ONNX Runtime fp32. Results: docs/measurements/openvino_quantize.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from edgepanc.backends.selection import BackendChoice, build_predictor
from edgepanc.bundle import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    patch = tuple(bundle.plan.patch_size)
    predictors = {
        name: build_predictor(
            BackendChoice(record["backend"], record["precision"], "cpu", name, "timing"), bundle
        )
        for name, record in bundle.artifacts.items()
        if record["backend"] != "torch"
    }
    for batch in args.batches:
        tile = np.random.default_rng(0).standard_normal((batch, 1, *patch), np.float32)
        times: dict[str, list[float]] = {name: [] for name in predictors}
        for _ in range(args.rounds):
            for name, predictor in predictors.items():
                predictor(tile)
                start = time.perf_counter()
                predictor(tile)
                times[name].append((time.perf_counter() - start) * 1000.0 / batch)
        medians = {name: statistics.median(values) for name, values in times.items()}
        reference = medians.get("onnx_fp32")
        print(
            f"batch {batch}, patch {patch}, ms per patch:",
            json.dumps({name: round(ms, 1) for name, ms in medians.items()}),
        )
        if reference:
            print(
                "  speed-up over onnx_fp32:",
                {n: round(reference / ms, 2) for n, ms in medians.items()},
            )


if __name__ == "__main__":
    main()
