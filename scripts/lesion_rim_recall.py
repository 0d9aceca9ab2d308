"""How much of each lesion's outer shell (its rim) a prediction labels lesion, against its core.

    python scripts/lesion_rim_recall.py PRED DATA [--subtype 2] [--rim-mm 2.2] [--gland-mm 3.0]
        [--csv rim.csv]

For every labelled case of DATA (train and validation splits) of ``--subtype`` with a mask in
PRED (``edgepanc run``'s output folder, ``CASE.nii.gz``), the reference lesion is split by the
distance to its surface: the rim (voxels within ``--rim-mm`` of it) and the core (the rest). The
gland beside it is the pancreas within ``--gland-mm`` outside the lesion. Per case: the rim's
share of the lesion, the mean attenuation (HU) of rim, core and gland, the share of rim and core
voxels PRED labels lesion, and the lesion Dice a prediction would reach that found the core
exactly and none of the rim (2 core / (core + lesion)). The last line sums them up.

It says whether a lesion is under-segmented at its edge, and whether that edge differs from the
gland in attenuation at all (docs/measurements/tversky_and_rims.md).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from edgepanc.data.cases import Case, discover_cases
from edgepanc.networks.config import LESION_LABEL

PANCREAS_LABEL = 1


def read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The voxel array (z, y, x) and its spacing in the same order."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def case_row(
    case: Case, prediction: Path, rim_mm: float, gland_mm: float
) -> dict[str, float] | None:
    """The rim and core figures of one case; None when its reference has no lesion."""
    reference, spacing = read(case.label)
    lesion = reference == LESION_LABEL
    if not lesion.any():
        return None
    image = read(case.image)[0].astype(np.float32)
    predicted = read(prediction)[0] == LESION_LABEL
    depth = ndimage.distance_transform_edt(lesion, sampling=spacing)
    outside = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    rim = lesion & (depth <= rim_mm)
    core = lesion & ~rim
    gland = (reference == PANCREAS_LABEL) & (outside <= gland_mm)

    def mean(values: np.ndarray, mask: np.ndarray) -> float:
        return float(values[mask].mean()) if mask.any() else float("nan")

    rim_share = float(rim.sum() / lesion.sum())
    return {
        "rim_share": rim_share,
        "rim_hu": mean(image, rim),
        "core_hu": mean(image, core),
        "gland_hu": mean(image, gland),
        "rim_recall": mean(predicted, rim),
        "core_recall": mean(predicted, core),
        "dice_core_only": 2 * (1 - rim_share) / (2 - rim_share),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pred", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--subtype", type=int, default=2)
    parser.add_argument("--rim-mm", type=float, default=2.2)
    parser.add_argument("--gland-mm", type=float, default=3.0)
    parser.add_argument("--csv", type=Path, help="write the per-case rows here")
    args = parser.parse_args()
    rows = []
    for case in discover_cases(args.data):
        prediction = args.pred / f"{case.case_id}.nii.gz"
        if case.label is None or case.subtype != args.subtype or not prediction.exists():
            continue
        row = case_row(case, prediction, args.rim_mm, args.gland_mm)
        if row is not None:
            rows.append({"case": case.case_id, **row})
    if not rows:
        sys.exit(f"{args.pred}: no prediction of a subtype-{args.subtype} case of {args.data}")
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def median(key: str) -> float:
        return float(np.nanmedian([row[key] for row in rows]))

    contrast = np.array([row["rim_hu"] - row["gland_hu"] for row in rows])
    print(
        f"{len(rows)} subtype-{args.subtype} lesions: rim share {median('rim_share'):.2f}, "
        f"rim recall {median('rim_recall'):.3f} (max {max(r['rim_recall'] for r in rows):.3f}), "
        f"core recall {median('core_recall'):.3f} (medians); rim - gland {np.median(contrast):.1f}"
        f" HU (within 15 HU: {int((np.abs(contrast) < 15).sum())}); Dice with the core alone: "
        f"mean {np.mean([r['dice_core_only'] for r in rows]):.3f}"
    )


if __name__ == "__main__":
    main()
