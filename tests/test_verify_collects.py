"""The data-set check names every broken file at once, folds repeated warnings, shows a table."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, tiny_pair, write

from edgepanc.data import verify as verify_module
from edgepanc.data.verify import verify_dataset
from edgepanc.errors import DatasetError


def test_three_different_problems_are_listed_in_one_error(quiz_dataset: Path) -> None:
    # 1: a label value outside {0, 1, 2}
    bad_values = quiz_dataset / "train/subtype0/quiz_0_001.nii.gz"
    values = sitk.GetArrayFromImage(tiny_pair()[1])
    values[0, 0, 0] = 7
    write(make_image(values), bad_values)
    # 2: a mask on another grid than its image
    bad_grid = quiz_dataset / "train/subtype1/quiz_1_002.nii.gz"
    write(tiny_pair(spacing=(1.0, 1.0, 3.0))[1], bad_grid)
    # 3: a truncated image
    truncated = quiz_dataset / "validation/subtype1/quiz_1_004_0000.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-200])

    with pytest.raises(DatasetError) as info:
        verify_dataset(quiz_dataset)
    message = str(info.value)
    assert info.value.path == quiz_dataset and "\n" not in message
    assert message.startswith(f"{quiz_dataset}: 3 problems in 6 cases")
    assert f"{bad_values}: label values outside {{0, 1, 2}}: 7" in message
    assert f"{bad_grid}: mask spacing" in message
    assert f"{truncated}: " in message and "truncated" in message


def test_the_list_stops_at_the_limit(quiz_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "MAX_PROBLEMS", 2)
    for mask in sorted(quiz_dataset.glob("*/subtype*/quiz_?_00?.nii.gz")):
        mask.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetError, match="2 problems in 6 cases \\(checking stopped after 2\\)"):
        verify_dataset(quiz_dataset)


def test_repeated_warnings_fold_into_one_line_per_kind(quiz_dataset: Path) -> None:
    masks = sorted(quiz_dataset.glob("*/subtype*/quiz_?_00?.nii.gz"))
    assert len(masks) == 4
    for mask in masks[:3]:  # float labels a hair off the integers
        values = sitk.GetArrayFromImage(sitk.ReadImage(str(mask))).astype(np.float32)
        write(make_image(values * np.float32(1.0000153)), mask)
    write(make_image(np.zeros_like(sitk.GetArrayFromImage(tiny_pair()[1]))), masks[3])
    warnings = verify_dataset(quiz_dataset).warnings
    assert len(warnings) == 2
    assert warnings[0].startswith("3 masks: labels within 1e-3 of an integer were rounded (")
    assert all(str(m) in warnings[0] for m in masks[:3])
    assert str(masks[3]) in warnings[1] and "all background" in warnings[1]


def test_table_of_cases_per_split_and_subtype(quiz_dataset: Path) -> None:
    lines = verify_dataset(quiz_dataset).table().splitlines()
    assert lines[0].split() == ["split", "subtype0", "subtype1", "subtype2", "unknown", "total"]
    assert [line.split() for line in lines[1:]] == [
        ["train", "1", "1", "1", "0", "3"],
        ["validation", "0", "1", "0", "0", "1"],
        ["test", "0", "0", "0", "2", "2"],
    ]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_training_logs_the_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from edgepanc.training.runner import labelled_cases

    from train_support import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    with caplog.at_level(logging.INFO):
        assert len(labelled_cases(data)) == 6
    assert "subtype0  subtype1  subtype2  total" in caplog.text


def test_every_unpaired_file_is_named_in_one_error(quiz_dataset: Path) -> None:
    lone_image = quiz_dataset / "train/subtype0/quiz_0_001_0000.nii.gz"
    (quiz_dataset / "train/subtype0/quiz_0_001.nii.gz").unlink()
    lone_mask = quiz_dataset / "validation/subtype1/quiz_1_004.nii.gz"
    (quiz_dataset / "validation/subtype1/quiz_1_004_0000.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        verify_dataset(quiz_dataset)
    message = str(info.value)
    assert info.value.path == quiz_dataset and message.count("; ") == 1
    assert f"{lone_image}: image has no mask" in message
    assert f"{lone_mask}: mask has no image" in message


def test_missing_subtype_rows_are_named_together(nnunet_dataset: Path) -> None:
    table = nnunet_dataset / "subtypes.csv"
    lines = table.read_text().splitlines()
    table.write_text(lines[0] + "\n")  # the header alone: no labelled case has a row
    with pytest.raises(
        DatasetError, match="no row for 3 labelled cases: pan_001, pan_002, pan_003"
    ):
        verify_dataset(nnunet_dataset)
