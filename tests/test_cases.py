"""edgepanc.data.cases: discovering the quiz and nnU-Net raw layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_pair, write

from edgepanc.data.cases import Case, detect_layout, discover_cases, split_cases
from edgepanc.errors import DatasetError


def by_id(cases: list[Case]) -> dict[str, Case]:
    return {c.case_id: c for c in cases}


def test_quiz_layout_discovered(quiz_dataset: Path) -> None:
    assert detect_layout(quiz_dataset) == "quiz"
    cases = by_id(discover_cases(quiz_dataset))
    assert {cid: (c.split, c.subtype) for cid, c in cases.items()} == {
        "quiz_0_001": ("train", 0),
        "quiz_1_002": ("train", 1),
        "quiz_2_003": ("train", 2),
        "quiz_1_004": ("validation", 1),
        "quiz_005": ("test", None),
        "quiz_006": ("test", None),
    }
    train = cases["quiz_2_003"]
    assert train.image == quiz_dataset / "train/subtype2/quiz_2_003_0000.nii.gz"
    assert train.label == quiz_dataset / "train/subtype2/quiz_2_003.nii.gz"
    assert cases["quiz_005"].label is None


def test_nnunet_layout_discovered(nnunet_dataset: Path) -> None:
    assert detect_layout(nnunet_dataset) == "nnunet"
    cases = by_id(discover_cases(nnunet_dataset))
    assert {cid: (c.split, c.subtype) for cid, c in cases.items()} == {
        "pan_001": ("train", 2),
        "pan_002": ("train", 0),
        "pan_003": ("validation", 1),
        "pan_004": ("test", None),
    }
    assert cases["pan_001"].label == nnunet_dataset / "labelsTr/pan_001.nii.gz"
    assert cases["pan_004"].image == nnunet_dataset / "imagesTs/pan_004_0000.nii.gz"


def test_split_cases(quiz_dataset: Path) -> None:
    cases = discover_cases(quiz_dataset)
    assert [c.case_id for c in split_cases(cases, "validation")] == ["quiz_1_004"]
    assert len(split_cases(cases, "train")) == 3
    with pytest.raises(ValueError, match="split"):
        split_cases(cases, "training")


def test_not_a_data_set(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a data set") as info:
        discover_cases(tmp_path)
    assert info.value.path == tmp_path
    with pytest.raises(DatasetError, match="no such"):
        discover_cases(tmp_path / "missing")


def test_nnunet_without_csv_has_unknown_subtypes(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "subtypes.csv").unlink()
    cases = discover_cases(nnunet_dataset)
    assert {c.subtype for c in cases} == {None}


def test_nnunet_csv_named_in_dataset_json(nnunet_dataset: Path) -> None:
    table = nnunet_dataset / "tables" / "classes.csv"
    table.parent.mkdir()
    (nnunet_dataset / "subtypes.csv").rename(table)
    (nnunet_dataset / "other.csv").write_text("a,b\n")  # ignored once the table is named
    meta = json.loads((nnunet_dataset / "dataset.json").read_text())
    meta["subtype_csv"] = "tables/classes.csv"
    (nnunet_dataset / "dataset.json").write_text(json.dumps(meta))
    assert by_id(discover_cases(nnunet_dataset))["pan_001"].subtype == 2


def test_nnunet_two_csvs_are_ambiguous(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "other.csv").write_text("Names,Subtype\n")
    with pytest.raises(DatasetError, match="several CSV"):
        discover_cases(nnunet_dataset)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("Names,Subtype\npan_001,2\npan_002,0\n", "no row for labelled case pan_003"),
        ("Names,Subtype\npan_001,3\npan_002,0\npan_003,1\n", "subtype 3 of pan_001 is outside"),
        ("Names,Subtype\npan_001,two\n", "not an integer"),
        ("Names,Subtype\npan_001,1\npan_001.nii.gz,1\n", "listed twice"),
        ("Case,Class\npan_001,1\n", "Names and Subtype"),
    ],
)
def test_bad_subtype_table(nnunet_dataset: Path, table: str, match: str) -> None:
    csv_path = nnunet_dataset / "subtypes.csv"
    csv_path.write_text(table)
    with pytest.raises(DatasetError, match=match) as info:
        discover_cases(nnunet_dataset)
    assert info.value.path == csv_path


def test_nnunet_validation_list_must_name_labelled_cases(nnunet_dataset: Path) -> None:
    meta_path = nnunet_dataset / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["validation"] = ["pan_004"]  # a test case
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="pan_004") as info:
        discover_cases(nnunet_dataset)
    assert info.value.path == meta_path


def test_nnunet_num_training_checked(nnunet_dataset: Path) -> None:
    meta_path = nnunet_dataset / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["numTraining"] = 5
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="numTraining is 5"):
        discover_cases(nnunet_dataset)


def test_nnunet_second_channel_rejected(nnunet_dataset: Path) -> None:
    extra = write(tiny_pair()[0], nnunet_dataset / "imagesTr" / "pan_001_0001.nii.gz")
    with pytest.raises(DatasetError, match="one CT channel") as info:
        discover_cases(nnunet_dataset)
    assert info.value.path == extra


def test_quiz_volume_outside_subtype_folder(quiz_dataset: Path) -> None:
    stray = write(tiny_pair()[0], quiz_dataset / "train" / "quiz_9_999_0000.nii.gz")
    with pytest.raises(DatasetError, match="outside a subtype") as info:
        discover_cases(quiz_dataset)
    assert info.value.path == stray
