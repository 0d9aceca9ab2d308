"""The unoptimised reference every speed claim is measured against, and the speed gate.

:func:`run_baseline` is what a careful user would get from the trained network without any of the
runtime's optimisations, i.e. nnU-Net's default inference:

- the same trained weights, fp32, eager PyTorch (no ONNX, no INT8, no bf16);
- tiles with step 0.5 of the patch and Gaussian importance weighting;
- the whole preprocessed volume is tiled (no coarse-to-fine ROI);
- logits for the whole volume are stitched in memory (``keep_logits=True``), as nnU-Net does;
- the same preprocessing, finishing step (:func:`~edgepanc.postprocessing.finish_prediction`) and
  restore onto the input grid as ``edgepanc run``, so masks of the two paths are directly
  comparable.

It calls the shared tiling (:func:`edgepanc.inferers.sliding_window_inference`); nothing here is a
second copy of the runtime. Run it from the shell with
``python -m edgepanc.runtime.baseline SCAN --model BUNDLE --out DIR`` (the bench measures it from
outside the process, like ``edgepanc run``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgepanc.backends.base import Predictor
from edgepanc.bundle import ModelBundle, load_bundle
from edgepanc.errors import EdgepancError
from edgepanc.inferers.sliding_window import sliding_window_inference
from edgepanc.io.volume import read_image
from edgepanc.postprocessing import finish_prediction
from edgepanc.preprocessing import PreprocessingPlan, preprocess_image
from edgepanc.runtime.outputs import plan_outputs
from edgepanc.runtime.pipeline import CaseRun, StageTimer, write_case_outputs
from edgepanc.runtime.report import CaseReport
from edgepanc.runtime.scans import all_or_none, check_output_folder, create_output_folder

BASELINE_STEP = 0.5
BASELINE_IMPORTANCE = "gaussian"


@dataclass(frozen=True)
class BaselineConfig:
    """The baseline's fixed choices; exposed so tests can shrink the work, never to tune it."""

    step: float = BASELINE_STEP
    importance: str = BASELINE_IMPORTANCE
    tile_batch: int = 1  # nnU-Net predicts one tile at a time
    overwrite: bool = False


DEFAULT_BASELINE = BaselineConfig()


def load_baseline_predictor(bundle: ModelBundle | Path) -> Predictor:
    """fp32 eager PyTorch on the CPU over ``bundle``'s trained weights (a ModelBundle or a path).

    Example: ``load_baseline_predictor(Path("bundles/pancreas")).precision`` -> ``"fp32"``.
    """
    from edgepanc.backends.torch_backend import TorchPredictor

    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(Path(bundle))
    return TorchPredictor(bundle.load_network(), device="cpu", precision="fp32")


def run_baseline(
    scan_path: str | Path,
    bundle: ModelBundle | str | Path,
    out: str | Path,
    config: BaselineConfig = DEFAULT_BASELINE,
) -> CaseReport:
    """Segment and classify ``scan_path`` the unoptimised way; write mask and case JSON to ``out``.

    ``bundle`` is a ModelBundle or a bundle folder. Returns the
    :class:`~edgepanc.runtime.report.CaseReport` that was written beside the mask (stage timings:
    read, preprocess, infer, postprocess, restore, write).

    Example: ``run_baseline("ct_0000.nii.gz", "bundles/pancreas", "baseline_out").tile_count``
    -> ``504``.
    """
    scan_path, out = Path(scan_path), Path(out)
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(Path(bundle))
    plan = PreprocessingPlan.from_dict(bundle.preprocessing)
    check_output_folder(out)
    # the runtime's checks (never an input or a reference mask, nobody else's files); a case
    # finished earlier is computed again all the same, since the baseline is there to be timed
    outputs = plan_outputs([scan_path], out, None, overwrite=config.overwrite).cases[0].outputs
    create_output_folder(out)
    predictor = load_baseline_predictor(bundle)
    spacing = tuple(float(s) for s in plan.target_spacing)
    timer = StageTimer()

    with timer("read"):
        image = read_image(scan_path)
    with timer("preprocess"):
        volume, grid = preprocess_image(image, plan)
    del image
    gc.collect()
    with timer("infer"):
        result = sliding_window_inference(
            volume,
            predictor,
            plan.patch_size,
            step_fraction=config.step,
            tile_batch=config.tile_batch,
            importance=config.importance,  # type: ignore[arg-type]
            keep_logits=True,  # the whole-volume logits stay in memory, as in nnU-Net
            keep_probabilities=True,
        )
    del volume
    with timer("postprocess"):
        finished = finish_prediction(result, spacing, lesion_margins_mm=bundle.lesion_margins_mm)
    tile_count = len(result.tiles)
    del result
    with all_or_none() as written:
        run = CaseRun(
            predictor,
            None,
            tile_batch=config.tile_batch,
            tile_count=tile_count,
            roi={"mode": "off", "used": False, "box": None, "coarse_tiles": 0},
            notes=["baseline: whole volume, step 0.5, Gaussian, fp32 PyTorch, logits kept"],
        )
        return write_case_outputs(scan_path, outputs, finished, grid, run, timer, written)


# --- the speed gate ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    """Outcome of a speed gate: ``ratio`` = median baseline time / median optimised time."""

    passed: bool
    ratio: float
    baseline_median_s: float
    optimised_median_s: float
    min_ratio: float
    message: str


def speedup_gate(
    baseline_times: Sequence[float], optimised_times: Sequence[float], min_ratio: float = 1.10
) -> GateResult:
    """Pass when the optimised path is at least ``min_ratio`` times faster (ratio of medians).

    Medians, not means, so one run disturbed by another process on a shared machine does not
    decide the gate; both lists should come from alternating runs in the same session.

    Example: ``speedup_gate([2.0, 2.2], [1.0, 1.1]).ratio`` -> ``2.0``.
    """
    if not baseline_times or not optimised_times:
        raise ValueError("speedup_gate needs at least one time for each path")
    if min(baseline_times) <= 0 or min(optimised_times) <= 0:
        raise ValueError("times must be positive seconds")
    if min_ratio <= 0:
        raise ValueError(f"min_ratio must be positive, got {min_ratio}")
    base = float(statistics.median(baseline_times))
    opt = float(statistics.median(optimised_times))
    ratio = base / opt
    passed = ratio >= min_ratio
    message = (
        f"{'PASS' if passed else 'FAIL'}: optimised {opt:.3f} s vs baseline {base:.3f} s "
        f"(medians of {len(optimised_times)} and {len(baseline_times)} runs): "
        f"{ratio:.3f}x, need >= {min_ratio:.2f}x"
    )
    return GateResult(passed, ratio, base, opt, float(min_ratio), message)


# --- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgepanc.runtime.baseline SCAN --model BUNDLE --out DIR [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="python -m edgepanc.runtime.baseline",
        description="Unoptimised reference inference (nnU-Net defaults) for benchmarks.",
    )
    parser.add_argument("scan", type=Path)
    parser.add_argument("--model", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = run_baseline(
            args.scan, args.model, args.out, BaselineConfig(overwrite=args.overwrite)
        )
    except EdgepancError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    total = sum(report.timings_s.values())
    print(f"{report.name}: {report.tile_count} tiles, {total:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
