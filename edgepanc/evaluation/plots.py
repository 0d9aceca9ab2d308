"""Pictures of an evaluation: the subtype confusion matrix and one row per case.

The per-case plot puts the whole-pancreas and lesion Dice of every case side by side, sorted by
lesion Dice, and marks each case's missed and false-positive lesions and a wrong subtype, so the
cases that pull a mean down are named at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgepanc.io.atomic import atomic_path

if TYPE_CHECKING:
    from edgepanc.evaluation.evaluate import CaseScore

DPI = 150


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: evaluation runs on machines without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def save_confusion_plot(confusion: Sequence[Sequence[int]], path: Path) -> Path:
    """The subtype confusion matrix (rows truth, columns prediction) with its counts, as a PNG.

    Example: ``save_confusion_plot([[3, 1, 0], [0, 4, 0], [1, 0, 2]], Path("confusion.png"))``.
    """
    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, int(counts.max())))
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if count > counts.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour)
    ticks = range(counts.shape[0])
    ax.set_xticks(ticks, [f"subtype {c}" for c in ticks])
    ax.set_yticks(ticks, [f"subtype {c}" for c in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    total = int(counts.sum())
    right = int(np.trace(counts))
    ax.set_title(f"subtype: {right} of {total} right")
    return _save(fig, path)


def _case_marks(score: CaseScore) -> str:
    missed = sum(not lesion["hit"] for lesion in score.detection["lesions"])
    extra = len(score.detection["false_positives"])
    marks = [f"{missed} missed" if missed else "", f"{extra} FP" if extra else ""]
    if score.true_subtype is not None and score.predicted_subtype != score.true_subtype:
        marks.append("subtype wrong")
    return ", ".join(m for m in marks if m)


def save_case_plot(scores: Sequence[CaseScore], path: Path) -> Path:
    """One row per case: whole-pancreas and lesion Dice bars, worst lesion Dice first, with the
    case's missed lesions, false-positive lesions and a wrong subtype written beside it.

    Example: ``save_case_plot(scores, Path("evaluation_cases.png"))``.
    """
    plt = _pyplot()
    ordered = sorted(scores, key=lambda s: (s.lesion_dsc, s.whole_dsc, s.name))
    rows = np.arange(len(ordered))
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.28 * max(1, len(ordered))))
    height = 0.4
    ax.barh(rows - height / 2, [s.whole_dsc for s in ordered], height, label="whole pancreas")
    ax.barh(rows + height / 2, [s.lesion_dsc for s in ordered], height, label="lesion")
    for row, score in zip(rows, ordered, strict=True):
        ax.text(1.02, row, _case_marks(score), va="center", fontsize=7, color="firebrick")
    ax.set_yticks(rows, [s.name.removesuffix(".nii.gz") for s in ordered], fontsize=7)
    ax.set_ylim(len(ordered) - 0.5, -0.5)  # worst case on top
    ax.set_xlim(0, 1.45)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("Dice")
    # below the axis: the marks at the right of the bars have the space beside them
    ax.legend(loc="upper center", bbox_to_anchor=(0.35, -0.15), ncol=2, fontsize=7, frameon=False)
    ax.set_title(f"{len(ordered)} cases, worst lesion Dice first")
    return _save(fig, path)
