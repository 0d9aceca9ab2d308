"""``edgepanc evaluate``: score a run's masks and subtypes against a data set's references.

Predictions are matched to reference cases by mask file name: ``edgepanc run`` names the mask of
``quiz_0_001_0000.nii.gz`` ``quiz_0_001.nii.gz``, the reference mask's own name, in both the quiz
and the nnU-Net layout. The case list comes from the references, never from the predictions, so a
case the run missed is scored as an empty mask and a wrong subtype, and listed under
``missing_predictions``. All metrics come from :mod:`edgepanc.metrics`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from edgepanc.data.cases import SPLITS, Case, discover_cases
from edgepanc.errors import InputError
from edgepanc.io.atomic import write_json_atomic, write_text_atomic
from edgepanc.io.volume import read_label
from edgepanc.metrics import bootstrap_intervals, segmentation_metrics, summarize_cases

SUBTYPE_CSV = "subtype_results.csv"
NUM_SUBTYPES = 3
CASE_COLUMNS = ("name", "whole_dsc", "lesion_dsc", "true_subtype", "predicted_subtype")


@dataclass(frozen=True)
class CaseScore:
    """One row of the per-case CSV."""

    name: str
    whole_dsc: float
    lesion_dsc: float
    true_subtype: int | None
    predicted_subtype: int | None  # None: no prediction for this case


def select_reference_cases(gt_root: Path, split: str) -> list[Case]:
    """Labelled cases of ``split`` ("all": every labelled case); InputError when there are none."""
    labelled = [c for c in discover_cases(gt_root) if c.label is not None]
    chosen = labelled if split == "all" else [c for c in labelled if c.split == split]
    if not chosen:
        present = sorted({c.split for c in labelled})
        raise InputError(
            gt_root,
            f"no labelled cases in split {split!r} (labelled splits here: {', '.join(present) or 'none'}; "
            f"choose one of {', '.join((*SPLITS, 'all'))})",
        )
    return chosen


def read_subtype_predictions(pred_dir: Path) -> dict[str, int]:
    """``Names -> Subtype`` from ``subtype_results.csv`` (empty when the run wrote none)."""
    path = pred_dir / SUBTYPE_CSV
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"Names", "Subtype"} <= set(reader.fieldnames):
            raise InputError(path, "expected a header 'Names,Subtype'")
        predictions: dict[str, int] = {}
        for row in reader:
            try:
                subtype = int(row["Subtype"])
            except (TypeError, ValueError):
                raise InputError(
                    path, f"subtype {row['Subtype']!r} of {row['Names']} is not an integer"
                ) from None
            if not 0 <= subtype < NUM_SUBTYPES:
                raise InputError(
                    path, f"subtype {subtype} of {row['Names']} is outside 0..{NUM_SUBTYPES - 1}"
                )
            predictions[row["Names"]] = subtype
    return predictions


def _reference_name(case: Case) -> str:
    assert case.label is not None
    return case.label.name


def load_prediction(path: Path, reference: sitk.Image) -> np.ndarray | None:
    """The predicted labels (z, y, x), or None when the file is missing; must match the grid."""
    if not path.exists():
        return None
    predicted = read_label(path)
    if predicted.GetSize() != reference.GetSize():
        raise InputError(
            path,
            f"size {predicted.GetSize()} differs from the reference mask's {reference.GetSize()}",
        )
    return sitk.GetArrayFromImage(predicted)


def _wrong_subtype(true_subtype: int) -> int:
    # a missing prediction must count as wrong: take a class that is not the truth
    return (true_subtype + 1) % NUM_SUBTYPES


def evaluate_predictions(
    pred_dir: Path, gt_root: Path, split: str = "validation"
) -> tuple[list[CaseScore], dict[str, Any]]:
    """Score every reference case of ``split``; return the per-case rows and the summary."""
    cases = select_reference_cases(gt_root, split)
    subtypes = read_subtype_predictions(pred_dir)
    scores: list[CaseScore] = []
    per_case: list[dict[str, float]] = []
    y_true: list[int] = []
    y_pred: list[int] = []
    missing_masks: list[str] = []
    missing_subtypes: list[str] = []
    for case in cases:
        name = _reference_name(case)
        reference = read_label(case.label)  # type: ignore[arg-type]
        ref = sitk.GetArrayViewFromImage(reference)
        pred = load_prediction(pred_dir / name, reference)
        if pred is None:
            missing_masks.append(name)
            pred = np.zeros_like(ref)
        seg = segmentation_metrics(pred, ref)
        per_case.append(seg)
        predicted = subtypes.get(name)
        if case.subtype is not None:
            if predicted is None:
                missing_subtypes.append(name)
            y_true.append(case.subtype)
            y_pred.append(_wrong_subtype(case.subtype) if predicted is None else predicted)
        scores.append(
            CaseScore(
                name, float(seg["whole_dsc"]), float(seg["lesion_dsc"]), case.subtype, predicted
            )
        )
    summary = summarize_cases(per_case, y_true, y_pred)
    summary.update(
        {
            "ci95": bootstrap_intervals(per_case, y_true, y_pred, level=0.95),
            "split": split,
            "n_cases": len(cases),
            "n_classified": len(y_true),
            "missing_predictions": {"masks": missing_masks, "subtypes": missing_subtypes},
        }
    )
    return scores, summary


def case_scores_csv(scores: Sequence[CaseScore]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CASE_COLUMNS)
    for s in scores:
        writer.writerow(
            [
                s.name,
                f"{s.whole_dsc:.6f}",
                f"{s.lesion_dsc:.6f}",
                "" if s.true_subtype is None else s.true_subtype,
                "" if s.predicted_subtype is None else s.predicted_subtype,
            ]
        )
    return buffer.getvalue()


def write_evaluation(
    scores: Sequence[CaseScore], summary: dict[str, Any], summary_path: Path
) -> Path:
    """Write the summary JSON and, beside it, ``<stem>_cases.csv``; return the CSV's path."""
    cases_path = summary_path.with_name(f"{summary_path.stem}_cases.csv")
    write_text_atomic(cases_path, case_scores_csv(scores))
    write_json_atomic(summary_path, summary)
    return cases_path


def format_summary(summary: dict[str, Any]) -> str:
    """Readable summary for the terminal."""
    missing = summary["missing_predictions"]
    ci = summary["ci95"]

    def row(label: str, key: str) -> str:
        low, high = ci[key]
        return f"{label:<15}{summary[key]:.4f}  (95% CI {low:.4f}-{high:.4f})"

    lines = [
        f"cases          {summary['n_cases']} ({summary['split']})",
        row("whole DSC", "whole_dsc"),
        row("lesion DSC", "lesion_dsc"),
        row("macro F1", "macro_f1"),
        row("accuracy", "accuracy"),
        f"confusion      {summary['confusion']} (rows: truth)",
        f"(bootstrap over cases, {ci['resamples']} resamples)",
    ]
    if missing["masks"] or missing["subtypes"]:
        lines.append(f"missing masks: {', '.join(missing['masks']) or 'none'}")
        lines.append(f"missing subtypes: {', '.join(missing['subtypes']) or 'none'}")
    return "\n".join(lines)
