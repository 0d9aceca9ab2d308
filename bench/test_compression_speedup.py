"""The compression stage's speed-ups per patch, as ratios measured in one run.

Against fp32 PyTorch on the bundle weights (the reference of ``edgepanc quantize``): the best INT8
variant and pruned + INT8 (each the fastest within the accuracy tolerance, else the fastest;
:func:`edgepanc.quantization.report.target_variant`) must meet the targets of
``SPEEDUP_TARGETS``: 1.8x and 3x. All variants are timed in
turns in this one process (:func:`edgepanc.quantization.latency.interleaved_latencies`), so load
from other jobs hits them alike. Needs a bundle written by ``edgepanc quantize``
(``EDGEPANC_BENCH_BUNDLE``); the quantization report says which variant is which.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgepanc.bundle import load_bundle
from edgepanc.quantization.report import SPEEDUP_TARGETS, VariantResult, target_variant

from results import Recorder

ROUNDS = 7


def test_int8_and_pruned_int8_against_torch_fp32(bench_bundle, recorder: Recorder) -> None:
    from edgepanc.backends import OnnxRuntimePredictor, TorchPredictor
    from edgepanc.quantization.latency import interleaved_latencies

    report_path = bench_bundle.path / "quantization.json"
    if not report_path.is_file():
        pytest.skip("the bundle was not written by edgepanc quantize (no quantization.json)")
    bundle = load_bundle(bench_bundle.path)
    report = json.loads(report_path.read_text())
    variants = [VariantResult.from_dict(v) for v in report["variants"]]
    chosen = {label: target_variant(variants, prefix) for label, prefix, _ in SPEEDUP_TARGETS}
    if chosen["best INT8"] is None:
        pytest.skip("the quantized bundle has no INT8 ONNX Runtime variant")
    predictors: dict[str, Any] = {
        "torch_fp32": TorchPredictor(bundle.load_network(), device="cpu", precision="fp32")
    }
    for variant in filter(None, chosen.values()):
        predictors[variant.name] = OnnxRuntimePredictor(
            bundle.path / str(variant.file), precision="int8"
        )
    patch = tuple(int(p) for p in bundle.plan.patch_size)
    latencies = interleaved_latencies(predictors, patch, rounds=ROUNDS)
    reference = latencies["torch_fp32"].median_ms
    ratios = {name: reference / lat.median_ms for name, lat in latencies.items()}
    recorder.record(
        "compression",
        patch=list(patch),
        rounds=ROUNDS,
        latency_ms={name: lat.to_dict() for name, lat in latencies.items()},
        speedup=ratios,
        best_int8=chosen["best INT8"].name,
        pruned_int8=chosen["pruned + INT8"].name if chosen["pruned + INT8"] else None,
    )
    print(
        "per patch: "
        + ", ".join(
            f"{n} {lat.median_ms:.1f} ms ({ratios[n]:.2f}x)" for n, lat in latencies.items()
        )
    )
    missed = [
        f"{label} {chosen[label].name}: {ratios[chosen[label].name]:.2f}x, target {target}x"
        for label, _, target in SPEEDUP_TARGETS
        if chosen[label] is not None and ratios[chosen[label].name] < target
    ]
    assert not missed, "; ".join(missed)
