"""Hostile or broken training inputs: dataset.json fields, all-background labels, failed starts.

Each one ends in one line naming the file (or a warning naming it), never a traceback, and a
run that never started leaves nothing in ``--out``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hostile_support import cli, one_error_line

from edgepanc.data.cases import discover_cases
from edgepanc.data.verify import verify_dataset
from edgepanc.errors import DatasetError, InputError

from train_support import write_tiny_dataset

TINY_FLAGS = ["--set", "preset=tiny", "--set", "patch_size=16", "--set", "target_spacing=2"]
TINY_FLAGS += ["--set", "epochs=1", "--set", "steps_per_epoch=1", "--set", "warmup_epochs=0"]
TINY_FLAGS += ["--device", "cpu", "--threads", "1"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def set_dataset_json(root: Path, **fields: object) -> Path:
    path = root / "dataset.json"
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))
    return path


# -- paths named by dataset.json stay inside the data folder ----------------------------------


@pytest.mark.parametrize("named", ["/etc/passwd", "../outside.csv", "tables/../../outside.csv"])
def test_subtype_csv_outside_the_data_folder_is_refused(nnunet_dataset: Path, named: str) -> None:
    (nnunet_dataset.parent / "outside.csv").write_text("Names,Subtype\npan_001,1\n")
    meta_path = set_dataset_json(nnunet_dataset, subtype_csv=named)
    with pytest.raises(DatasetError) as info:
        discover_cases(nnunet_dataset)
    assert info.value.path == meta_path
    assert named in str(info.value) and "inside" in str(info.value)


def test_subtype_csv_through_a_link_leading_outside_is_refused(nnunet_dataset: Path) -> None:
    (nnunet_dataset.parent / "outside.csv").write_text("Names,Subtype\npan_001,1\n")
    (nnunet_dataset / "link.csv").symlink_to(nnunet_dataset.parent / "outside.csv")
    (nnunet_dataset / "subtypes.csv").unlink()
    meta_path = set_dataset_json(nnunet_dataset, subtype_csv="link.csv")
    with pytest.raises(DatasetError, match="link.csv.*outside") as info:
        discover_cases(nnunet_dataset)
    assert info.value.path == meta_path


def test_etc_passwd_as_subtype_csv_is_one_line_and_never_read(
    nnunet_dataset: Path, tmp_path: Path
) -> None:
    set_dataset_json(nnunet_dataset, subtype_csv="/etc/passwd")
    out = tmp_path / "run"
    line = one_error_line(cli("train", "--data", nnunet_dataset, "--out", out, *TINY_FLAGS))
    assert "dataset.json" in line and "/etc/passwd" in line
    assert "root:" not in line  # the file's first line is not echoed
    assert not out.exists()


@pytest.mark.parametrize(
    "entry",
    [
        {"image": "/etc/passwd", "label": "./labelsTr/pan_001.nii.gz"},
        {"image": "./imagesTr/pan_001_0000.nii.gz", "label": "../../secret.nii.gz"},
    ],
)
def test_training_list_paths_outside_the_data_folder_are_refused(
    nnunet_dataset: Path, entry: dict[str, str]
) -> None:
    meta_path = set_dataset_json(nnunet_dataset, training=[entry])
    with pytest.raises(DatasetError) as info:
        discover_cases(nnunet_dataset)
    assert info.value.path == meta_path
    bad = entry["label"] if entry["image"].startswith("./") else entry["image"]
    assert bad in str(info.value)


def test_training_list_paths_inside_the_data_folder_are_accepted(nnunet_dataset: Path) -> None:
    set_dataset_json(
        nnunet_dataset,
        training=[
            {"image": "./imagesTr/pan_001_0000.nii.gz", "label": "./labelsTr/pan_001.nii.gz"}
        ],
        test=["./imagesTs/pan_004_0000.nii.gz"],
    )
    assert len(discover_cases(nnunet_dataset)) == 4


# -- dataset.json field types --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"numTraining": "eight"}, "numTraining"),
        ({"numTraining": 2.5}, "numTraining"),
        ({"numTraining": True}, "numTraining"),
        ({"numTraining": -1}, "numTraining"),
        ({"file_ending": 5}, "file_ending"),
        ({"file_ending": "/../x"}, "file_ending"),
        ({"validation": [1, 2]}, "validation"),
        ({"validation": "pan_003"}, "validation"),
        ({"subtype_csv": 7}, "subtype_csv"),
        ({"subtype_csv": ""}, "subtype_csv"),
        ({"training": {"image": "x"}}, "training"),
        ({"training": [{"image": 3, "label": "./labelsTr/pan_001.nii.gz"}]}, "training"),
        ({"test": [5]}, "test"),
    ],
)
def test_wrong_types_in_dataset_json_are_one_line_errors(
    nnunet_dataset: Path, fields: dict[str, object], words: str
) -> None:
    meta_path = set_dataset_json(nnunet_dataset, **fields)
    with pytest.raises(DatasetError) as info:
        discover_cases(nnunet_dataset)
    assert info.value.path == meta_path
    assert words in str(info.value) and "\n" not in str(info.value)


def test_num_training_eight_through_the_cli(nnunet_dataset: Path, tmp_path: Path) -> None:
    set_dataset_json(nnunet_dataset, numTraining="eight")
    line = one_error_line(
        cli("train", "--data", nnunet_dataset, "--out", tmp_path / "run", *TINY_FLAGS)
    )
    assert "dataset.json" in line and "numTraining" in line and "'eight'" in line
    assert not (tmp_path / "run").exists()


# -- a labelled case whose label is all background -------------------------------------------


def _blank_one_label(data: Path) -> Path:
    mask = sorted((data / "train" / "subtype1").glob("quiz_1_*[0-9].nii.gz"))[0]
    image = sitk.ReadImage(str(mask))
    blank = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(image)))
    blank.CopyInformation(image)
    sitk.WriteImage(blank, str(mask))
    return mask


def test_all_background_label_is_a_warning_naming_the_file(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    mask = _blank_one_label(data)
    warnings = verify_dataset(data).warnings
    assert [w for w in warnings if str(mask) in w and "all background" in w]
    assert len(warnings) == 1  # the other labels hold pancreas and lesion


def test_training_says_which_label_is_all_background(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    mask = _blank_one_label(data)
    with caplog.at_level(logging.WARNING):
        result = cli("train", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS)
    assert result.exit_code == 0, result.output
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and str(mask) in r.message]
    assert warned and "all background" in warned[0].message
    assert str(mask) in (tmp_path / "run" / "train.log").read_text()


def test_train_help_documents_the_all_background_warning() -> None:
    result = cli("train", "--help")
    assert "all background" in " ".join(result.output.split())


# -- a run that never started leaves nothing ---------------------------------------------------


def _corrupt_bundle(folder: Path) -> Path:
    from runtime_support import make_tiny_bundle

    make_tiny_bundle(folder)
    (folder / "weights.pt").write_bytes(b"not a torch file at all")
    return folder


def test_failed_init_from_leaves_nothing_and_a_rerun_works(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    bundle = _corrupt_bundle(tmp_path / "bundle")
    out = tmp_path / "run"
    flags = TINY_FLAGS[:4] + TINY_FLAGS[6:]  # without target_spacing: the bundle's
    line = one_error_line(cli("train", "--data", data, "--out", out, "--init-from", bundle, *flags))
    assert "weights.pt" in line
    assert not out.exists()
    result = cli("train", "--data", data, "--out", out, *TINY_FLAGS)
    assert result.exit_code == 0, result.output


def test_failed_init_from_keeps_an_empty_out_folder_as_it_was(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    bundle = _corrupt_bundle(tmp_path / "bundle")
    out = tmp_path / "run"
    out.mkdir()
    flags = TINY_FLAGS[:4] + TINY_FLAGS[6:]  # without target_spacing: the bundle's
    one_error_line(cli("train", "--data", data, "--out", out, "--init-from", bundle, *flags))
    assert out.is_dir() and not any(out.iterdir())


def test_cuda_refusal_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    out = tmp_path / "nested" / "run"
    flags = [f for f in TINY_FLAGS if f not in ("--device", "cpu")]
    line = one_error_line(cli("train", "--data", data, "--out", out, *flags, "--device", "cuda"))
    assert "cuda" in line.lower()
    assert not (tmp_path / "nested").exists()


def test_a_failure_before_the_first_checkpoint_removes_what_the_run_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgepanc.training import loop

    def fail(self: object, *args: object, **kwargs: object) -> None:
        raise InputError(tmp_path, "stopped before the first step")

    monkeypatch.setattr(loop.Trainer, "save_last", fail)
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    out = tmp_path / "run"
    line = one_error_line(cli("train", "--data", data, "--out", out, *TINY_FLAGS))
    assert "stopped before the first step" in line
    assert not out.exists()
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "notes.txt").write_text("the user's")
    result = cli("train", "--data", data, "--out", cv / "folds", "--folds", "2", *TINY_FLAGS)
    one_error_line(result)
    assert sorted(p.name for p in cv.iterdir()) == ["notes.txt"]


def test_require_thermal_refusal_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgepanc.thermal import sources

    monkeypatch.setattr(sources, "default_candidates", lambda: [])
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    out = tmp_path / "run"
    line = one_error_line(
        cli("train", "--data", data, "--out", out, *TINY_FLAGS, "--require-thermal")
    )
    assert "sensor" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c.pop("optimizer"),
        lambda c: c["state"].update(bogus=1),
        lambda c: c["model"].popitem(),
        lambda c: c["rng"]["numpy"].update(key=torch.zeros(3)),
    ],
    ids=["no optimizer", "unknown state field", "missing weight", "short numpy state"],
)
def test_a_damaged_checkpoint_is_refused_on_resume_with_one_line(tmp_path: Path, damage) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    run = tmp_path / "run"
    assert cli("train", "--data", data, "--out", run, *TINY_FLAGS).exit_code == 0
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    damage(checkpoint)
    torch.save(checkpoint, run / "last.pt")
    before = sorted(p.name for p in run.iterdir())
    line = one_error_line(cli("train", "--data", data, "--out", run, *TINY_FLAGS, "--resume"))
    assert "last.pt" in line
    assert sorted(p.name for p in run.iterdir()) == before  # the run stays resumable as it was


def test_a_subtype_table_that_is_not_utf8_is_one_line(nnunet_dataset: Path, tmp_path: Path) -> None:
    table = nnunet_dataset / "subtypes.csv"
    table.write_bytes(b"Names,Subtype\npan_001,\xff\xfe1\n")
    line = one_error_line(
        cli("train", "--data", nnunet_dataset, "--out", tmp_path / "run", *TINY_FLAGS)
    )
    assert str(table) in line and "not UTF-8" in line
    assert not (tmp_path / "run").exists()
