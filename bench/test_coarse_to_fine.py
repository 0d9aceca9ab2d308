"""Coarse-to-fine against tiling the whole volume, on the full-size (512 x 512 x 300) phantom.

Both are ``edgepanc run`` with the same bundle, step and backend; only ``--roi on`` / ``--roi off``
differs. Runs alternate (on off on off ...); agreement is the Dice between the two masks (whole
pancreas and lesion). Two ratios of medians are recorded: of the tiling stages (coarse + fine
pass against the whole-volume pass: what coarse-to-fine changes) and of the whole process
(which adds the same fixed start-up, read, resampling, restore and write to both). The target,
asserted on the tiling stages: at least 5x faster at whole-pancreas Dice >= 0.98 between the two
masks, or, where they differ more, with the ROI's mask at least as close to the phantom's
reference label as the whole-volume mask (coarse-to-fine must not lose pancreas; it may leave
out what tiling everything wrongly finds far from it).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import SimpleITK as sitk

from edgepanc.metrics import segmentation_metrics

from harness import BenchCase, alternate, optimised_command, read_masks, rounds
from results import Recorder, Spread

SPEEDUP_TARGET = 5.0
AGREEMENT_TARGET = 0.98
TILING_STAGES = ("coarse", "fine")


def test_coarse_to_fine_against_full_tiling(
    full_case: BenchCase, bench_bundle, bench_dir: Path, recorder: Recorder
) -> None:
    outs = {mode: bench_dir / f"roi_{mode}" for mode in ("on", "off")}
    commands = {
        mode: [*optimised_command(full_case.image, bench_bundle.path, out), "--roi", mode]
        for mode, out in outs.items()
    }
    runs = alternate(commands, full_case.image, outs, rounds(2))
    masks = read_masks(outs, full_case.image)
    agreement = segmentation_metrics(masks["on"], masks["off"])
    # Agreement alone cannot say which mask is wrong where they differ: score both.
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(full_case.label)))
    reference_whole = {
        mode: segmentation_metrics(mask, reference)["whole_dsc"] for mode, mask in masks.items()
    }
    seconds = {mode: [r.seconds for r in runs[mode]] for mode in runs}
    speedup = statistics.median(seconds["off"]) / statistics.median(seconds["on"])
    tiling = {
        mode: [sum(r.case["timings_s"].get(k, 0.0) for k in TILING_STAGES) for r in runs[mode]]
        for mode in runs
    }
    tiling_speedup = statistics.median(tiling["off"]) / statistics.median(tiling["on"])
    last_on = runs["on"][-1].case
    roi = last_on.get("roi", {})
    recorder.record(
        "coarse_to_fine",
        case="full",
        roi_on=Spread.of(seconds["on"]),
        roi_off=Spread.of(seconds["off"]),
        speedup=speedup,
        tiling_on=Spread.of(tiling["on"]),
        tiling_off=Spread.of(tiling["off"]),
        tiling_speedup=tiling_speedup,
        box_fraction=roi.get("fraction"),
        tiles_on=int(last_on.get("tile_count", 0)) + int(roi.get("coarse_tiles", 0)),
        tiles_off=int(runs["off"][-1].case.get("tile_count", 0)),
        whole_dsc=agreement["whole_dsc"],
        lesion_dsc=agreement["lesion_dsc"],
        reference_whole_dsc=reference_whole,
    )
    print(
        f"coarse-to-fine: {statistics.median(seconds['on']):.2f} s vs full tiling "
        f"{statistics.median(seconds['off']):.2f} s = {speedup:.2f}x; box {roi.get('fraction')} of "
        f"the volume; tiling stages {statistics.median(tiling['on']):.2f} s vs "
        f"{statistics.median(tiling['off']):.2f} s = {tiling_speedup:.2f}x; agreement whole {agreement['whole_dsc']:.4f}, lesion {agreement['lesion_dsc']:.4f}; "
        f"against the reference: ROI {reference_whole['on']:.4f}, full {reference_whole['off']:.4f}"
    )
    assert roi.get("used"), f"the coarse pass found no pancreas: {roi}"
    # With the CPU recipe's bundle (session 8) tiling everything kept a false 58,500-voxel organ
    # component far from the gland, which the ROI never tiled: agreement 0.773, but against the
    # reference 0.910 (ROI) vs 0.700 (whole volume). The reference decides such disagreements.
    assert (
        agreement["whole_dsc"] >= AGREEMENT_TARGET
        or reference_whole["on"] >= reference_whole["off"]
    ), f"ROI mask disagrees with full tiling and is further from the reference: {reference_whole}"
    assert tiling_speedup >= SPEEDUP_TARGET
