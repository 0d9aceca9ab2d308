"""Surface metrics and lesion detection on small synthetic masks with answers known by hand."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edgepanc.metrics import (
    lesion_detection,
    mean_defined,
    size_bin,
    size_bins,
    summarize_detection,
    surface_metrics,
)

from runtime_support import run_cli


def cube(shape, corner, edge) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    z, y, x = corner
    mask[z : z + edge, y : y + edge, x : x + edge] = True
    return mask


def diameter(voxels: int, voxel_mm3: float = 1.0) -> float:
    return (6 * voxels * voxel_mm3 / math.pi) ** (1 / 3)


# --- surfaces ---------------------------------------------------------------------------------


def test_hd95_of_two_cubes_shifted_along_x_is_the_shift_in_mm():
    ref = cube((30, 30, 30), (10, 10, 5), 10)
    pred = np.roll(ref, 3, axis=2)  # 3 voxels along x
    # a sixth of each surface (the face left behind) lies exactly 3 voxels from the other
    assert surface_metrics(pred, ref, (1.0, 1.0, 1.0))["hd95"] == pytest.approx(3.0)
    assert surface_metrics(pred, ref, (1.0, 1.0, 2.0))["hd95"] == pytest.approx(6.0)
    assert surface_metrics(pred, ref, (3.0, 0.5, 1.0))["hd95"] == pytest.approx(3.0)


def test_surface_dice_counts_what_lies_within_the_tolerance():
    ref = cube((30, 30, 30), (10, 10, 5), 10)
    pred = np.roll(ref, 3, axis=2)
    assert surface_metrics(pred, ref, (1, 1, 1), tolerance_mm=3.0)["nsd"] == pytest.approx(1.0)
    within_2mm = surface_metrics(pred, ref, (1, 1, 1), tolerance_mm=2.0)["nsd"]
    assert 0.5 < within_2mm < 1.0
    assert surface_metrics(ref, ref, (1, 1, 1)) == {"hd95": 0.0, "nsd": 1.0}


def test_surface_metrics_of_empty_masks_are_defined_or_none_never_nan():
    ref = cube((12, 12, 12), (2, 2, 2), 4)
    empty = np.zeros_like(ref)
    assert surface_metrics(empty, ref, (1, 1, 1)) == {"hd95": None, "nsd": 0.0}
    assert surface_metrics(ref, empty, (1, 1, 1)) == {"hd95": None, "nsd": 0.0}
    assert surface_metrics(empty, empty, (1, 1, 1)) == {"hd95": 0.0, "nsd": 1.0}
    assert mean_defined([2.0, None, 4.0]) == 3.0 and mean_defined([None]) is None
    with pytest.raises(ValueError, match="shapes differ"):
        surface_metrics(ref, ref[1:], (1, 1, 1))


# --- lesions ----------------------------------------------------------------------------------


def labelled(shape, *lesions: np.ndarray) -> np.ndarray:
    labels = np.ones(shape, dtype=np.uint8)  # everything pancreas: only label 2 is a lesion
    for lesion in lesions:
        labels[lesion] = 2
    return labels


SHAPE = (40, 40, 60)
SMALL = cube(SHAPE, (2, 2, 2), 5)  # 125 mm3: 6.2 mm
MEDIUM = cube(SHAPE, (2, 20, 2), 12)  # 1728 mm3: (6 * 1728 / pi) ** (1/3) = 14.888 mm
LARGE = cube(SHAPE, (15, 15, 30), 20)  # 8000 mm3: 24.8 mm


def test_a_sphere_missed_one_hit_and_a_false_positive():
    z, y, x = np.indices(SHAPE)
    sphere = (z - 30) ** 2 + (y - 8) ** 2 + (x - 10) ** 2 <= 3**2  # 123 voxels: 6.2 mm
    ref = labelled(SHAPE, sphere, MEDIUM)
    part_of_medium = cube(SHAPE, (4, 22, 4), 3)
    false_positive = cube(SHAPE, (30, 30, 50), 4)  # 64 mm3: 5.0 mm, nowhere near a lesion
    found = lesion_detection(labelled(SHAPE, part_of_medium, false_positive), ref, (1, 1, 1))
    # ordered by component label, which scipy gives in scan order: MEDIUM (z 2-13) first
    medium, missed = found["lesions"]
    assert medium == {
        "diameter_mm": pytest.approx(14.8884, abs=1e-3),
        "bin": "10-20 mm",
        "hit": True,
    }
    assert missed == {"diameter_mm": pytest.approx(6.1702, abs=1e-3), "bin": "<10 mm", "hit": False}
    assert sphere.sum() == 123
    assert found["false_positives"] == [
        {"diameter_mm": pytest.approx(diameter(64), abs=1e-3), "bin": "<10 mm"}
    ]


def test_sizes_use_the_voxel_volume_and_corner_touching_voxels_are_one_lesion():
    corner_touching = cube(SHAPE, (2, 2, 2), 2) | cube(SHAPE, (4, 4, 4), 2)
    found = lesion_detection(labelled(SHAPE), labelled(SHAPE, corner_touching), (2.0, 1.0, 1.0))
    (lesion,) = found["lesions"]
    assert lesion["diameter_mm"] == pytest.approx(diameter(16, voxel_mm3=2.0), abs=1e-3)
    assert lesion["hit"] is False and found["false_positives"] == []
    assert [size_bin(9.99), size_bin(10.0), size_bin(19.99), size_bin(20.0)] == [
        "<10 mm",
        "10-20 mm",
        "10-20 mm",
        ">=20 mm",
    ]
    assert size_bins() == ["<10 mm", "10-20 mm", ">=20 mm"]


def test_detection_summary_per_size_bin():
    one = lesion_detection(labelled(SHAPE, MEDIUM), labelled(SHAPE, SMALL, MEDIUM), (1, 1, 1))
    two = lesion_detection(
        labelled(SHAPE, LARGE, cube(SHAPE, (30, 2, 2), 3)), labelled(SHAPE, LARGE), (1, 1, 1)
    )
    rows = summarize_detection([one, two])
    assert rows["<10 mm"] == {
        "lesions": 1,
        "hit": 0,
        "missed": 1,
        "sensitivity": 0.0,
        "false_positives": 1,
    }
    assert rows["10-20 mm"] == {
        "lesions": 1,
        "hit": 1,
        "missed": 0,
        "sensitivity": 1.0,
        "false_positives": 0,
    }
    assert rows[">=20 mm"]["sensitivity"] == 1.0
    assert rows["all"] == {
        "lesions": 3,
        "hit": 2,
        "missed": 1,
        "sensitivity": pytest.approx(2 / 3),
        "false_positives": 1,
    }
    empty = summarize_detection([])
    assert empty["all"]["sensitivity"] is None and empty["all"]["lesions"] == 0


# --- edgepanc evaluate -------------------------------------------------------------------------


def write_case(folder: Path, name: str, labels: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.SetSpacing(spacing)
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / name))
    return folder / name


def test_evaluate_reports_lesions_surfaces_and_writes_its_pictures(tmp_path):
    data, pred = tmp_path / "data", tmp_path / "pred"
    reference = labelled(SHAPE, SMALL, MEDIUM)
    folder = data / "validation" / "subtype1"
    write_case(folder, "quiz_1_001.nii.gz", reference)
    write_case(folder, "quiz_1_001_0000.nii.gz", np.zeros(SHAPE, np.int16))
    predicted = labelled(SHAPE, MEDIUM, cube(SHAPE, (30, 2, 50), 4))
    write_case(pred, "quiz_1_001.nii.gz", predicted)
    (pred / "subtype_results.csv").write_text("Names,Subtype\nquiz_1_001.nii.gz,2\n")
    result = run_cli("evaluate", "--pred", pred, "--gt", data, "--nsd-tolerance", "1.5")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((pred / "evaluation.json").read_text())
    assert summary["detection"]["all"] == {
        "lesions": 2,
        "hit": 1,
        "missed": 1,
        "sensitivity": 0.5,
        "false_positives": 1,
    }
    assert summary["surface"]["nsd_tolerance_mm"] == 1.5
    assert summary["surface"]["whole_hd95_mm"] == 0.0  # the whole pancreas is the whole volume
    expected = surface_metrics(predicted == 2, reference == 2, (1, 1, 1), 1.5)
    assert summary["surface"]["lesion_hd95_mm"] == pytest.approx(expected["hd95"])
    assert summary["surface"]["lesion_nsd"] == pytest.approx(expected["nsd"])
    with open(pred / "evaluation_cases.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert (row["lesions"], row["lesions_hit"], row["false_positive_lesions"]) == ("2", "1", "1")
    for picture in ("evaluation_confusion.png", "evaluation_cases.png"):
        assert (pred / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in pred.iterdir() if p.name.startswith(".")]  # no temporary left
    assert "lesions hit    1/2 (<10 mm 0/1, 10-20 mm 1/1, >=20 mm 0/0)" in result.stdout


def test_a_missing_prediction_misses_every_lesion_and_has_no_hd95(tmp_path):
    data, pred = tmp_path / "data", tmp_path / "pred"
    folder = data / "validation" / "subtype0"
    write_case(folder, "quiz_0_001.nii.gz", labelled(SHAPE, SMALL, LARGE))
    write_case(folder, "quiz_0_001_0000.nii.gz", np.zeros(SHAPE, np.int16))
    pred.mkdir()
    result = run_cli("evaluate", "--pred", pred, "--gt", data)
    assert result.exit_code == 0, result.stderr
    summary = json.loads((pred / "evaluation.json").read_text())
    assert summary["detection"]["all"]["missed"] == 2
    assert summary["surface"]["whole_hd95_mm"] is None
    assert summary["surface"]["hd95_cases"] == {"whole_hd95_mm": 0, "lesion_hd95_mm": 0}
    assert summary["surface"]["whole_nsd"] == 0.0
    assert "whole HD95     - (both masks in 0 of 1 cases)   NSD at 2 mm 0.0000" in result.stdout
