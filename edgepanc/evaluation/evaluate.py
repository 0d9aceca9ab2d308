"""``edgepanc evaluate``: score a run's masks and subtypes against a data set's references.

Predictions are matched to reference cases by mask file name: ``edgepanc run`` names the mask of
``quiz_0_001_0000.nii.gz`` ``quiz_0_001.nii.gz``, the reference mask's own name, in both the quiz
and the nnU-Net layout. The case list comes from the references, never from the predictions, so a
case the run missed is scored as an empty mask and a wrong subtype, and listed under
``missing_predictions``. All metrics come from :mod:`edgepanc.metrics`: Dice and subtype scores,
HD95 and normalised surface Dice of the whole pancreas and of the lesion, and lesion detection
(each reference lesion hit or missed, false-positive lesions, by size).
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
from edgepanc.metrics import (
    LESION_LABEL,
    NSD_TOLERANCE_MM,
    WHOLE_LABELS,
    bootstrap_intervals,
    lesion_detection,
    mean_defined,
    segmentation_metrics,
    summarize_cases,
    summarize_detection,
    surface_metrics,
)

SUBTYPE_CSV = "subtype_results.csv"
NUM_SUBTYPES = 3
SURFACE_KEYS = ("whole_hd95_mm", "whole_nsd", "lesion_hd95_mm", "lesion_nsd")
CASE_COLUMNS = (
    "name",
    "whole_dsc",
    "lesion_dsc",
    *SURFACE_KEYS,
    "lesions",
    "lesions_hit",
    "false_positive_lesions",
    "true_subtype",
    "predicted_subtype",
)


@dataclass(frozen=True)
class CaseScore:
    """One row of the per-case CSV; a surface metric None is undefined (an empty mask)."""

    name: str
    whole_dsc: float
    lesion_dsc: float
    true_subtype: int | None
    predicted_subtype: int | None  # None: no prediction for this case
    surface: dict[str, float | None]  # SURFACE_KEYS
    detection: dict[str, list[dict[str, Any]]]  # metrics.lesion_detection

    @property
    def lesions_hit(self) -> int:
        """Reference lesions the prediction overlaps. Example: ``score.lesions_hit`` -> ``1``."""
        return sum(lesion["hit"] for lesion in self.detection["lesions"])


def case_surface_and_lesions(
    pred: np.ndarray, ref: np.ndarray, spacing_zyx: tuple[float, ...], tolerance_mm: float
) -> tuple[dict[str, float | None], dict[str, list[dict[str, Any]]]]:
    """Surface metrics of the whole pancreas and the lesion, and the case's lesion detection.

    Example: ``surface, detection = case_surface_and_lesions(pred, ref, (2.5, 0.8, 0.8), 2.0)``
    -> ``surface["lesion_hd95_mm"]`` ``4.1``.
    """
    surface: dict[str, float | None] = {}
    for name, pred_mask, ref_mask in (
        ("whole", np.isin(pred, WHOLE_LABELS), np.isin(ref, WHOLE_LABELS)),
        ("lesion", pred == LESION_LABEL, ref == LESION_LABEL),
    ):
        values = surface_metrics(pred_mask, ref_mask, spacing_zyx, tolerance_mm)
        surface[f"{name}_hd95_mm"], surface[f"{name}_nsd"] = values["hd95"], values["nsd"]
    return surface, lesion_detection(pred, ref, spacing_zyx)


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
    pred_dir: Path,
    gt_root: Path,
    split: str = "validation",
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
) -> tuple[list[CaseScore], dict[str, Any]]:
    """Score every reference case of ``split``; return the per-case rows and the summary.

    Example: ``scores, summary = evaluate_predictions(Path("pred"), Path("data"), "validation")``
    -> ``summary["detection"]["<10 mm"]["sensitivity"]`` ``0.5``.
    """
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
        spacing = tuple(float(s) for s in reversed(reference.GetSpacing()))
        surface, detection = case_surface_and_lesions(pred, ref, spacing, nsd_tolerance_mm)
        predicted = subtypes.get(name)
        if case.subtype is not None:
            if predicted is None:
                missing_subtypes.append(name)
            y_true.append(case.subtype)
            y_pred.append(_wrong_subtype(case.subtype) if predicted is None else predicted)
        scores.append(
            CaseScore(
                name,
                float(seg["whole_dsc"]),
                float(seg["lesion_dsc"]),
                case.subtype,
                predicted,
                surface,
                detection,
            )
        )
    summary = summarize_cases(per_case, y_true, y_pred)
    summary.update(
        {
            "surface": {
                **{key: mean_defined([s.surface[key] for s in scores]) for key in SURFACE_KEYS},
                "nsd_tolerance_mm": nsd_tolerance_mm,
                "hd95_cases": {
                    key: sum(s.surface[key] is not None for s in scores)
                    for key in ("whole_hd95_mm", "lesion_hd95_mm")
                },
            },
            "detection": summarize_detection([s.detection for s in scores]),
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
                *("" if s.surface[k] is None else f"{s.surface[k]:.4f}" for k in SURFACE_KEYS),
                len(s.detection["lesions"]),
                s.lesions_hit,
                len(s.detection["false_positives"]),
                "" if s.true_subtype is None else s.true_subtype,
                "" if s.predicted_subtype is None else s.predicted_subtype,
            ]
        )
    return buffer.getvalue()


def write_evaluation(
    scores: Sequence[CaseScore], summary: dict[str, Any], summary_path: Path
) -> list[Path]:
    """Write ``<stem>_cases.csv``, ``<stem>_confusion.png``, ``<stem>_cases.png`` and the summary
    JSON beside one another, each file whole or not at all; return their paths in that order.

    Example: ``write_evaluation(scores, summary, Path("pred/evaluation.json"))[0]`` ->
    ``Path("pred/evaluation_cases.csv")``.
    """
    from edgepanc.evaluation.plots import save_case_plot, save_confusion_plot

    def beside(suffix: str) -> Path:
        return summary_path.with_name(f"{summary_path.stem}{suffix}")

    written = [beside("_cases.csv"), beside("_confusion.png"), beside("_cases.png"), summary_path]
    write_text_atomic(written[0], case_scores_csv(scores))
    save_confusion_plot(summary["confusion"], written[1])
    save_case_plot(scores, written[2])
    write_json_atomic(summary_path, summary)
    return written


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
        *_surface_lines(summary["surface"], summary["n_cases"]),
        _detection_line(summary["detection"]),
    ]
    if missing["masks"] or missing["subtypes"]:
        lines.append(f"missing masks: {', '.join(missing['masks']) or 'none'}")
        lines.append(f"missing subtypes: {', '.join(missing['subtypes']) or 'none'}")
    return "\n".join(lines)


def _surface_lines(surface: dict[str, Any], n_cases: int) -> list[str]:
    tolerance = surface["nsd_tolerance_mm"]
    lines = []
    for name in ("whole", "lesion"):
        hd95, nsd = surface[f"{name}_hd95_mm"], surface[f"{name}_nsd"]
        shown = "-" if hd95 is None else f"{hd95:.2f} mm"
        cases = surface["hd95_cases"][f"{name}_hd95_mm"]
        lines.append(
            f"{name + ' HD95':<15}{shown} (both masks in {cases} of {n_cases} cases)   "
            f"NSD at {tolerance:g} mm {nsd:.4f}"
        )
    return lines


def _detection_line(detection: dict[str, dict[str, Any]]) -> str:
    bins = [
        f"{name} {row['hit']}/{row['lesions']}" for name, row in detection.items() if name != "all"
    ]
    total = detection["all"]
    return (
        f"lesions hit    {total['hit']}/{total['lesions']} ({', '.join(bins)}); "
        f"false-positive lesions {total['false_positives']}"
    )
