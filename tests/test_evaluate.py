"""``edgepanc evaluate`` equals metrics computed directly; missing predictions count and are listed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edgepanc.data.cases import discover_cases
from edgepanc.metrics import segmentation_metrics, summarize_cases

from runtime_support import run_cli


def _predict(
    cases, pred: Path, subtypes: dict[str, int], skip: str | None = None
) -> dict[str, np.ndarray]:
    """Masks derived from the references (one lesion voxel dropped, one pancreas voxel added)."""
    pred.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for case in cases:
        name = case.label.name
        if name == skip:
            continue
        reference = sitk.ReadImage(str(case.label))
        values = sitk.GetArrayFromImage(reference).astype(np.uint8)
        values[values == 2] = 1
        values[0, 0, 0] = 1
        out = sitk.GetImageFromArray(values)
        out.CopyInformation(reference)
        sitk.WriteImage(out, str(pred / name))
        arrays[name] = values
    rows = "".join(f"{n},{s}\n" for n, s in subtypes.items())
    (pred / "subtype_results.csv").write_text("Names,Subtype\n" + rows)
    return arrays


def test_evaluate_quiz_layout_matches_direct_metrics(quiz_dataset: Path, tmp_path: Path) -> None:
    cases = [c for c in discover_cases(quiz_dataset) if c.split == "train"]
    predicted = {"quiz_0_001.nii.gz": 0, "quiz_1_002.nii.gz": 2, "quiz_2_003.nii.gz": 2}
    arrays = _predict(cases, tmp_path / "pred", predicted)
    summary_path = tmp_path / "eval" / "summary.json"
    result = run_cli(
        "evaluate",
        "--pred",
        tmp_path / "pred",
        "--gt",
        quiz_dataset,
        "--split",
        "train",
        "--out",
        summary_path,
    )
    assert result.exit_code == 0, result.stderr

    per_case = [
        segmentation_metrics(
            arrays[c.label.name], sitk.GetArrayFromImage(sitk.ReadImage(str(c.label)))
        )
        for c in cases
    ]
    expected = summarize_cases(
        per_case, [c.subtype for c in cases], [predicted[c.label.name] for c in cases]
    )
    summary = json.loads(summary_path.read_text())
    for key in ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy"):
        assert summary[key] == expected[key]
    assert summary["confusion"] == expected["confusion"]
    assert summary["n_cases"] == 3 and summary["missing_predictions"] == {
        "masks": [],
        "subtypes": [],
    }
    assert summary["lesion_dsc"] == 0.0  # every lesion was dropped
    with open(summary_path.with_name("summary_cases.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [c.label.name for c in cases]
    assert [int(r["predicted_subtype"]) for r in rows] == [predicted[c.label.name] for c in cases]
    assert float(rows[0]["whole_dsc"]) == round(per_case[0]["whole_dsc"], 6)
    assert "macro F1" in result.stdout
    ci = summary["ci95"]
    for key in ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy"):
        low, high = ci[key]
        assert low <= expected[key] <= high, key
        assert f"(95% CI {low:.4f}-{high:.4f})" in result.stdout


def test_missing_prediction_counts_as_empty_and_wrong(nnunet_dataset: Path, tmp_path: Path) -> None:
    cases = [c for c in discover_cases(nnunet_dataset) if c.label is not None]
    truth = {c.label.name: c.subtype for c in cases}
    skipped = cases[0].label.name
    predicted = {n: s for n, s in truth.items() if n != skipped}  # the rest are right
    _predict(cases, tmp_path / "pred", predicted, skip=skipped)
    result = run_cli(
        "evaluate", "--pred", tmp_path / "pred", "--gt", nnunet_dataset, "--split", "all"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "pred" / "evaluation.json").read_text())
    assert summary["n_cases"] == len(cases)
    assert summary["missing_predictions"] == {"masks": [skipped], "subtypes": [skipped]}
    assert summary["accuracy"] == (len(cases) - 1) / len(cases)
    text = (tmp_path / "pred" / "evaluation_cases.csv").read_text()
    rows = {r["name"]: r for r in csv.DictReader(text.splitlines())}
    assert float(rows[skipped]["whole_dsc"]) == 0.0 and rows[skipped]["predicted_subtype"] == ""
    assert skipped in result.stdout


def test_empty_split_is_a_clear_error(quiz_dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    result = run_cli(
        "evaluate", "--pred", tmp_path / "pred", "--gt", quiz_dataset, "--split", "test"
    )
    assert result.exit_code != 0
    assert "no labelled cases in split 'test'" in result.stderr
