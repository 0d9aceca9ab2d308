"""A data set as people have it: nnU-Net layout, no validation key, no subtype table.

Training draws a stratified, seeded validation split (written to ``split.json``, announced,
reused on resume), scores the bundle on it with a real Dice, announces segmentation-only
training and records that the bundle has no classifier; ``edgepanc run`` then names no subtype.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from test_train_run import tiny_config

from edgepanc.bundle import load_bundle
from edgepanc.thermal import ThermalGuard
from edgepanc.training.kfold import SPLIT_SEED, validation_split
from edgepanc.training.runner import run_training

from runtime_support import run_cli
from train_support import SPACING_XYZ, tiny_case


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def write_nnunet_without_split(root: Path, cases: int = 5) -> Path:
    """imagesTr/labelsTr and a dataset.json with neither a validation key nor a subtype table."""
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for number in range(cases):
        image, label = tiny_case(number, number % 3)
        for array, path in (
            (image, root / "imagesTr" / f"pan_{number:03d}_0000.nii.gz"),
            (label, root / "labelsTr" / f"pan_{number:03d}.nii.gz"),
        ):
            written = sitk.GetImageFromArray(array)
            written.SetSpacing(SPACING_XYZ)
            sitk.WriteImage(written, str(path))
    (root / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    return root


def test_validation_split_is_stratified_seeded_and_about_a_fifth() -> None:
    ids = [f"c{i:02d}" for i in range(20)]
    subtypes = [0] * 10 + [1] * 5 + [2] * 5
    split = validation_split(ids, subtypes)
    assert split == validation_split(ids, subtypes, SPLIT_SEED)  # the same every time
    validation = split["validation"]
    assert len(validation) == 4 and sorted(validation + split["train"]) == ids
    by_subtype = [sum(subtypes[ids.index(c)] == s for c in validation) for s in (0, 1, 2)]
    assert by_subtype == [2, 1, 1]
    assert len(validation_split(ids[:2], [None, None])["validation"]) == 1
    with pytest.raises(ValueError, match="1 case"):
        validation_split(ids[:1], [0])


def test_no_split_and_no_subtypes_draws_a_split_scores_it_and_trains_segmentation_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_nnunet_without_split(tmp_path / "data")
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        run_training(tiny_config(data, run, epochs=2), guard=ThermalGuard([]))
    log_text = (run / "train.log").read_text()
    assert "segmentation only" in caplog.text and "segmentation only" in log_text
    assert "no validation split" in log_text and "split.json" in log_text

    drawn = json.loads((run / "split.json").read_text())
    assert drawn["seed"] == SPLIT_SEED and len(drawn["validation"]) == 1
    assert sorted(drawn["train"] + drawn["validation"]) == [f"pan_{i:03d}" for i in range(5)]
    assert "4 training and 1 validation cases" in log_text

    model = json.loads((run / "model.json").read_text())
    assert model["classifier"] is False and load_bundle(run).classifier is False
    validation = model["metrics"]["validation"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "whole_dsc" in r]
    best = max(scored, key=lambda r: r["combined_score"])
    # A real Dice on the drawn case, the one metrics.jsonl logged: not the epoch index.
    assert validation["whole_dsc"] == pytest.approx(best["whole_dsc"])
    assert validation["combined_score"] == pytest.approx(best["combined_score"])
    assert validation["n_cases"] == 1
    for key in ("whole_dsc", "lesion_dsc", "combined_score"):
        assert 0.0 <= validation[key] <= 1.0
    assert validation["combined_score"] not in (0.0, 1.0, float(model["metrics"]["best_epoch"]))

    # --resume validates on the cases split.json names (edited here: read back, not drawn again).
    edited = dict(
        drawn, validation=drawn["train"][:1], train=drawn["train"][1:] + drawn["validation"]
    )
    (run / "split.json").write_text(json.dumps(edited))
    run_training(tiny_config(data, run, epochs=3, resume=True), guard=ThermalGuard([]))
    assert json.loads((run / "split.json").read_text())["validation"] == edited["validation"]
    assert (
        f"validating on the 1 cases {run / 'split.json'} names" in (run / "train.log").read_text()
    )

    # edgepanc run with that bundle: no subtype, and the reason said once.
    scan = data / "imagesTr" / "pan_000_0000.nii.gz"
    out = tmp_path / "pred"
    with caplog.at_level(logging.WARNING):
        result = run_cli("run", scan, "--model", run, "--out", out, "--backend", "torch")
    assert result.exit_code == 0, result.output
    case = json.loads((out / "pan_000.json").read_text())
    assert case["subtype"] is None and case["probabilities"] == []
    with open(out / "subtype_results.csv", newline="") as fh:
        assert list(csv.reader(fh)) == [["Names", "Subtype"]]
    assert caplog.text.count("trained without subtype labels") == 1


def test_a_single_labelled_case_without_a_split_is_refused(tmp_path: Path) -> None:
    from edgepanc.errors import InputError

    data = write_nnunet_without_split(tmp_path / "data", cases=1)
    with pytest.raises(InputError, match="at least two labelled cases"):
        run_training(tiny_config(data, tmp_path / "run"), guard=ThermalGuard([]))
    assert not (tmp_path / "run").exists()
