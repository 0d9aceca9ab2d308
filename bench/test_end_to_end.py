"""End-to-end ``edgepanc run`` on a quiz-size and a full-size (512 x 512 x 300) phantom.

Each run is its own process (start-up and model load included) and its peak resident memory is
sampled from outside. On the full-size case this also reports how close the runtime gets to the
machine's limit (test_conv_throughput.py): network FLOPs per case (estimate_flops x tiles) over
the inference stages' seconds, and the seconds spent outside the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from harness import (
    CONV_FLOPS,
    BenchCase,
    TimedRun,
    conv_limit_seconds,
    optimised_command,
    rounds,
    time_calls,
    timed_run,
)
from results import Recorder, Spread

INFERENCE_STAGES = ("coarse", "fine")


@pytest.mark.parametrize("case_name", ["quiz", "full"])
def test_end_to_end_run(
    case_name: str, request, benchmark, bench_bundle, bench_dir: Path, recorder: Recorder
) -> None:
    case: BenchCase = request.getfixturevalue(f"{case_name}_case")
    out = bench_dir / f"e2e_{case_name}"
    cmd = optimised_command(case.image, bench_bundle.path, out)
    runs: list[TimedRun] = []

    def once() -> TimedRun:
        runs.append(timed_run(cmd, case.image, out))
        return runs[-1]

    benchmark.pedantic(once, rounds=rounds(3), warmup_rounds=0)
    mask = sitk.ReadImage(str(out / f"{case.image.name[: -len('_0000.nii.gz')]}.nii.gz"))
    image = sitk.ReadImage(str(case.image))
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    last = runs[-1]
    assert last.case["tile_count"] > 0 and last.peak_rss_bytes > 0
    recorder.record(
        "end_to_end",
        case=case_name,
        path="edgepanc run (suite)",
        shape=list(case.shape),
        seconds=Spread.of([r.seconds for r in runs]),
        peak_rss_bytes=max(r.peak_rss_bytes for r in runs),
    )
    if case_name == "full":
        record_utilisation(bench_bundle.path, last, bench_dir, recorder, case_name)


def record_utilisation(
    bundle_path: Path, run: TimedRun, bench_dir: Path, recorder: Recorder, case_name: str
) -> None:
    """Achieved share of the convolution limit, and the time outside the network, for ``run``."""
    from edgepanc.backends import select_predictor
    from edgepanc.bundle import load_bundle
    from edgepanc.networks import estimate_flops

    bundle = load_bundle(bundle_path)
    patch = tuple(int(p) for p in bundle.plan.patch_size)
    tiles = int(run.case["tile_count"]) + int(run.case.get("roi", {}).get("coarse_tiles", 0))
    network_gflop = estimate_flops(bundle.load_network(), (1, 1, *patch)) * tiles / 1e9
    timings = run.case["timings_s"]
    inference_s = sum(timings.get(stage, 0.0) for stage in INFERENCE_STAGES)
    # the same predictor the run chose, timed tile by tile here: the pure network share
    predictor = select_predictor(bundle)
    # at the run's own tile batch: PyTorch on the CPU is several times slower per tile at batch 1
    batch = max(1, int(run.case.get("tile_batch") or 1))
    tiles_in = np.zeros((batch, 1, *patch), dtype=np.float32)
    per_tile_s = float(np.median(time_calls(predictor, tiles_in, 3))) / batch
    backend, precision = run.case["backend"], run.case["precision"]
    limit_backend = backend if backend in ("torch", "onnxruntime") else "torch"
    limit_precision = precision if precision in ("fp32", "int8") else "fp32"
    if limit_backend == "torch" and limit_precision == "int8":
        limit_backend = "onnxruntime"
    limit_s = np.median(conv_limit_seconds(limit_backend, limit_precision, bench_dir / "conv", 3))
    limit_gflops = CONV_FLOPS / limit_s / 1e9
    achieved = network_gflop / inference_s
    recorder.record(
        "utilisation",
        case=case_name,
        backend=f"{backend} {precision}",
        tiles=tiles,
        network_gflop=network_gflop,
        network_s=inference_s,
        pure_network_s=per_tile_s * tiles,
        achieved_gflops=achieved,
        limit_gflops=limit_gflops,
        share=achieved / limit_gflops,
        outside_s=run.seconds - inference_s,
    )
    print(
        f"{case_name}: {tiles} tiles, {network_gflop:.1f} GFLOP in {inference_s:.2f} s of inference "
        f"stages ({per_tile_s * tiles:.2f} s pure network) = {achieved:.1f} GFLOP/s, "
        f"{100 * achieved / limit_gflops:.0f}% of the {limit_gflops:.1f} GFLOP/s conv limit; "
        f"{run.seconds - inference_s:.2f} s outside the network"
    )
    assert 0 < per_tile_s * tiles <= inference_s * 1.5
