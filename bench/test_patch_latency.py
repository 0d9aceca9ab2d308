"""Per-patch latency of every backend and precision this machine and bundle offer.

One tile of the bundle's patch size (batch 1), through the runtime's own predictors, one variant
after another in one session: torch fp32, torch bf16 (autocast on the CPU), ONNX Runtime fp32 and
INT8, OpenVINO fp32, bf16 (only where the CPU computes bf16 natively) and INT8 (NNCF). The files
come from the bundle when ``edgepanc quantize`` made them; fp32 ONNX is otherwise exported here
with the compression stage's exporter (OpenVINO fp32 and bf16 run it too), INT8 only exists in a
quantized bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepanc.bundle import load_bundle

from results import Recorder, Spread

VARIANTS = [
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
]


def bundle_artifact(bundle: Any, backend: str, precision: str) -> Path | None:
    """The file of the bundle's first artifact for ``backend`` at ``precision``, if any."""
    for name, info in sorted(bundle.artifacts.items()):
        if info.get("backend") == backend and info.get("precision") == precision:
            return bundle.artifact_path(name)
    return None


def make_predictor(bundle: Any, backend: str, precision: str, workdir: Path) -> Any:
    from edgepanc.backends import BackendUnavailable, OnnxRuntimePredictor, TorchPredictor

    if backend == "torch":
        return TorchPredictor(bundle.load_network(), device="cpu", precision=precision)
    # OpenVINO computes fp32 and bf16 from the fp32 ONNX file; its INT8 is NNCF's own IR
    source = ("onnxruntime", "fp32") if backend == "openvino" and precision != "int8" else None
    path = bundle_artifact(bundle, *(source or (backend, precision)))
    if path is None and (source or precision == "fp32"):
        from edgepanc.quantization.onnx_export import export_onnx

        path = workdir / "network_fp32.onnx"
        if not path.is_file():
            export_onnx(bundle.load_network(), path, bundle.plan.patch_size)
    if path is None:
        pytest.skip(f"the bundle has no {backend} {precision} artifact (made by edgepanc quantize)")
    if backend == "onnxruntime":
        return OnnxRuntimePredictor(path, precision=precision)
    from edgepanc.backends.openvino_backend import OpenVinoPredictor

    try:
        return OpenVinoPredictor(path, precision)
    except BackendUnavailable as exc:  # bf16 on a CPU without it, or no openvino installed
        pytest.skip(str(exc))


@pytest.mark.parametrize(("backend", "precision"), VARIANTS)
def test_patch_latency(
    backend: str, precision: str, benchmark, bench_bundle, bench_dir: Path, recorder: Recorder
) -> None:
    from edgepanc.networks import estimate_flops

    bundle = load_bundle(bench_bundle.path)
    predictor = make_predictor(bundle, backend, precision, bench_dir)
    patch = tuple(int(p) for p in bundle.plan.patch_size)
    tile = np.random.default_rng(0).standard_normal((1, 1, *patch), dtype=np.float32)
    seg, cls = benchmark.pedantic(predictor, args=(tile,), rounds=5, warmup_rounds=1)
    assert seg.shape == (1, 3, *patch) and cls.shape == (1, 3)
    assert np.isfinite(seg).all()
    flops = estimate_flops(bundle.load_network(), (1, 1, *patch))
    if benchmark.stats is not None:  # None under --benchmark-disable
        spread = Spread(
            benchmark.stats.stats.median,
            benchmark.stats.stats.min,
            benchmark.stats.stats.max,
            benchmark.stats.stats.rounds,
        )
        recorder.record(
            "patch",
            backend=backend,
            precision=precision,
            seconds=spread,
            gflops=flops / spread.median / 1e9,
            patch=list(patch),
        )
