"""The rim analysis script on a synthetic lesion whose rim and core are known by construction."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lesion_rim_recall import case_row  # noqa: E402

from edgepanc.data.cases import Case
from edgepanc.metrics import dice

SPACING = (1.0, 1.0, 1.0)


def write(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(path))
    return path


def test_a_prediction_of_the_core_alone_has_no_rim_recall_and_the_stated_dice(
    tmp_path: Path,
) -> None:
    # A ball of radius 8 voxels (1 mm) inside a gland of radius 14: HU 40 in the core, 130 in the
    # outer 2.2 mm, 100 in the gland.
    zz, yy, xx = np.mgrid[:36, :36, :36]
    radius = np.sqrt((zz - 18) ** 2 + (yy - 18) ** 2 + (xx - 18) ** 2)
    label = np.where(radius <= 14, 1, 0).astype(np.uint8)
    label[radius <= 8] = 2
    image = np.where(label == 1, 100.0, -100.0).astype(np.float32)
    image[label == 2] = 40.0
    lesion = label == 2
    depth = ndimage.distance_transform_edt(lesion)
    rim = lesion & (depth <= 2.2)
    image[rim] = 130.0
    core_only = np.where(lesion & ~rim, 2, label.clip(0, 1)).astype(np.uint8)
    case = Case(
        "ball",
        write(image, tmp_path / "ball_0000.nii.gz"),
        write(label, tmp_path / "ball.nii.gz"),
        2,
        "train",
    )
    row = case_row(case, write(core_only, tmp_path / "pred.nii.gz"), rim_mm=2.2, gland_mm=3.0)
    assert row["rim_recall"] == 0.0 and row["core_recall"] == 1.0
    assert row["rim_hu"] == 130.0 and row["core_hu"] == 40.0 and row["gland_hu"] == 100.0
    assert row["rim_share"] == pytest.approx(rim.sum() / lesion.sum())
    # The Dice it states for "core exact, no rim" is that prediction's lesion Dice.
    assert row["dice_core_only"] == pytest.approx(dice(core_only == 2, lesion))
    # The whole lesion predicted: everything recalled.
    full = case_row(case, case.label, rim_mm=2.2, gland_mm=3.0)
    assert full["rim_recall"] == 1.0 and full["core_recall"] == 1.0
    # No lesion in the reference: no row.
    write(label.clip(0, 1), tmp_path / "empty.nii.gz")
    empty = Case("e", case.image, tmp_path / "empty.nii.gz", 2, "train")
    assert case_row(empty, case.label, rim_mm=2.2, gland_mm=3.0) is None
