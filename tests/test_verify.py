"""edgepanc.data.verify: the data set integrity pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, tiny_pair, write

from edgepanc.data.cases import Case, discover_cases
from edgepanc.data.verify import verify_dataset
from edgepanc.errors import DatasetError

CASE_DIR = Path("train/subtype1")
IMAGE = CASE_DIR / "quiz_1_002_0000.nii.gz"
MASK = CASE_DIR / "quiz_1_002.nii.gz"


def expect_dataset_error(target: Path | list[Case], path: Path, match: str) -> str:
    with pytest.raises(DatasetError, match=match) as info:
        verify_dataset(target)
    assert info.value.path == path
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    return str(info.value)


def test_good_quiz_data_set_report(quiz_dataset: Path) -> None:
    report = verify_dataset(quiz_dataset)
    assert report.cases_per_split == {"train": 3, "validation": 1, "test": 2}
    assert report.subtypes_per_split == {
        "train": {"0": 1, "1": 1, "2": 1},
        "validation": {"1": 1},
        "test": {"unknown": 2},
    }
    assert report.warnings == [] and report.num_cases == 6
    assert "train: 3 cases" in report.summary()
    json.dumps(report.to_dict())  # serialisable for reports


def test_good_nnunet_data_set_report(nnunet_dataset: Path) -> None:
    report = verify_dataset(discover_cases(nnunet_dataset))
    assert report.cases_per_split == {"train": 2, "validation": 1, "test": 1}
    assert report.subtypes_per_split["train"] == {"0": 1, "2": 1}


def test_image_without_mask(quiz_dataset: Path) -> None:
    (quiz_dataset / MASK).unlink()
    expect_dataset_error(quiz_dataset, quiz_dataset / IMAGE, "image has no mask")


def test_mask_without_image(quiz_dataset: Path) -> None:
    (quiz_dataset / IMAGE).unlink()
    expect_dataset_error(quiz_dataset, quiz_dataset / MASK, "mask has no image")


def test_nnunet_mask_without_image(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "imagesTr" / "pan_002_0000.nii.gz").unlink()
    expect_dataset_error(nnunet_dataset, nnunet_dataset / "labelsTr/pan_002.nii.gz", "no image")


@pytest.mark.parametrize(
    ("prop", "change"),
    [
        ("size", {}),
        ("spacing", {"spacing": (1.0, 1.0, 2.0)}),
        ("origin", {"origin": (0.0, 5.0, 0.0)}),
        ("direction", {"direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1)}),
    ],
)
def test_geometry_mismatch(quiz_dataset: Path, prop: str, change: dict) -> None:
    _, mask = tiny_pair(**change)
    if prop == "size":
        mask = make_image(np.zeros((5, 6, 6), np.uint8))
    write(mask, quiz_dataset / MASK)
    message = expect_dataset_error(quiz_dataset, quiz_dataset / MASK, f"mask {prop}")
    assert f"image {prop}" in message
    if prop == "spacing":
        assert "(1, 1, 2)" in message and "(1, 1, 1)" in message
    assert verify_dataset(quiz_dataset, check_geometry=False).num_cases == 6


def test_geometry_within_tolerance_passes(quiz_dataset: Path) -> None:
    _, mask = tiny_pair(spacing=(1.00001, 1.0, 1.0))
    write(mask, quiz_dataset / MASK)
    assert verify_dataset(quiz_dataset).num_cases == 6


def test_label_values_outside_range(quiz_dataset: Path) -> None:
    values = sitk.GetArrayFromImage(tiny_pair()[1])
    values[0, 0, 0] = 4
    write(make_image(values), quiz_dataset / MASK)
    expect_dataset_error(quiz_dataset, quiz_dataset / MASK, "outside \\{0, 1, 2\\}: 4")


def test_near_integer_float_labels_warn(quiz_dataset: Path) -> None:
    values = sitk.GetArrayFromImage(tiny_pair()[1]).astype(np.float32) * np.float32(1.0000153)
    write(make_image(values), quiz_dataset / MASK)
    report = verify_dataset(quiz_dataset)
    assert len(report.warnings) == 1 and str(quiz_dataset / MASK) in report.warnings[0]


@pytest.mark.parametrize(("shape", "word"), [((6, 6), "2D"), ((2, 4, 6, 6), "4D")])
def test_wrong_dimension(quiz_dataset: Path, shape: tuple[int, ...], word: str) -> None:
    write(sitk.GetImageFromArray(np.zeros(shape, np.int16), isVector=False), quiz_dataset / IMAGE)
    expect_dataset_error(quiz_dataset, quiz_dataset / IMAGE, word)


@pytest.mark.parametrize("which", [IMAGE, MASK])
def test_truncated_file(quiz_dataset: Path, which: Path) -> None:
    rng = np.random.default_rng(1)
    path = write(
        make_image(rng.integers(-1000, 1000, (8, 16, 16)).astype(np.int16)), quiz_dataset / which
    )
    path.write_bytes(path.read_bytes()[:-200])
    expect_dataset_error(quiz_dataset, path, "truncated")


def test_unreadable_file(quiz_dataset: Path) -> None:
    (quiz_dataset / IMAGE).write_bytes(b"\x1f\x8b not really gzip")
    expect_dataset_error(quiz_dataset, quiz_dataset / IMAGE, "corrupt")


def test_empty_data_set(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    expect_dataset_error(tmp_path, tmp_path, "empty")


def test_case_listed_twice_across_splits(quiz_dataset: Path) -> None:
    target = quiz_dataset / "validation" / "subtype1"
    for path in (IMAGE, MASK):
        shutil.copy(quiz_dataset / path, target / path.name)
    with pytest.raises(DatasetError, match="quiz_1_002 appears twice"):
        verify_dataset(quiz_dataset)


def test_case_listed_twice_in_a_list(quiz_dataset: Path) -> None:
    cases = discover_cases(quiz_dataset)
    expect_dataset_error(cases + cases[:1], cases[0].image, "appears twice")


def test_subtype_folder_out_of_range(quiz_dataset: Path) -> None:
    shutil.copytree(quiz_dataset / CASE_DIR, quiz_dataset / "train" / "subtype3")
    expect_dataset_error(quiz_dataset, quiz_dataset / "train" / "subtype3", "subtype 3 is outside")


def test_csv_subtype_out_of_range(nnunet_dataset: Path) -> None:
    csv_path = nnunet_dataset / "subtypes.csv"
    csv_path.write_text("Names,Subtype\npan_001,3\npan_002,0\npan_003,1\n")
    expect_dataset_error(nnunet_dataset, csv_path, "outside 0..2")


def test_case_list_with_bad_subtype(quiz_dataset: Path) -> None:
    good = discover_cases(quiz_dataset)[0]
    bad = Case(good.case_id, good.image, good.label, 5, good.split)
    expect_dataset_error([bad], good.image, "subtype 5")
