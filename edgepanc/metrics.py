"""The one implementation of every metric: training, evaluation, quantization and bench use it.

Segmentation (labels 0 background, 1 pancreas, 2 lesion):

- ``whole_dsc``: Dice of labels {1, 2} together against the same union in the reference.
- ``lesion_dsc``: Dice of label 2.
- Dice is 1.0 when prediction and reference are both empty and 0.0 when exactly one is.

Classification (subtypes ``0 .. num_classes - 1``):

- ``per_class_f1[c] = 2 TP / (2 TP + FP + FN)``. A class that occurs in neither the truth nor
  the prediction has nothing to get wrong: it is reported as 1.0 but left out of ``macro_f1``.
- ``macro_f1``: the mean F1 over the classes present in ``y_true`` or ``y_pred``; this is
  scikit-learn's ``f1_score(average="macro")`` with its default labels (the union of both), so a
  validation split that lacks one subtype still has a defined, comparable score.
- ``confusion[t][p]``: number of cases of true class ``t`` predicted as ``p`` (rows are truth).

No metric is ever NaN or missing. With no cases at all every score is 0.0 (nothing was shown to
be right, and a checkpoint must not win on an empty validation set) and the counts say 0.

:func:`bootstrap_intervals` says how far a summary can be trusted: with 12 validation cases one
case moves macro F1 by about 0.08.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

WHOLE_LABELS = (1, 2)
LESION_LABEL = 2
SEGMENTATION_KEYS = ("whole_dsc", "lesion_dsc")
# The metrics combined_score() averages, all in [0, 1] with higher better.
SCORE_KEYS = ("whole_dsc", "lesion_dsc", "macro_f1")


def as_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array, a torch tensor (any device) or a nested sequence."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def dice(pred: Any, ref: Any) -> float:
    """Dice similarity of two boolean masks of the same shape; 1.0 if both are empty."""
    pred_mask = as_numpy(pred).astype(bool, copy=False)
    ref_mask = as_numpy(ref).astype(bool, copy=False)
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(
            f"mask shapes differ: prediction {pred_mask.shape}, reference {ref_mask.shape}"
        )
    denominator = int(np.count_nonzero(pred_mask)) + int(np.count_nonzero(ref_mask))
    if denominator == 0:
        return 1.0
    intersection = int(np.count_nonzero(pred_mask & ref_mask))
    return 2.0 * intersection / denominator


def segmentation_metrics(pred_labels: Any, ref_labels: Any) -> dict[str, float]:
    """``whole_dsc`` and ``lesion_dsc`` of one case from two label maps of the same shape."""
    pred = as_numpy(pred_labels)
    ref = as_numpy(ref_labels)
    return {
        "whole_dsc": dice(np.isin(pred, WHOLE_LABELS), np.isin(ref, WHOLE_LABELS)),
        "lesion_dsc": dice(pred == LESION_LABEL, ref == LESION_LABEL),
    }


def confusion_matrix(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = 3
) -> np.ndarray:
    """``num_classes x num_classes`` int64 counts; rows are truth, columns prediction."""
    truth = _class_indices(y_true, num_classes, "y_true")
    predicted = _class_indices(y_pred, num_classes, "y_pred")
    if truth.shape != predicted.shape:
        raise ValueError(f"y_true has {truth.size} entries but y_pred has {predicted.size}")
    flat = np.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = 3
) -> dict[str, Any]:
    """``macro_f1``, ``accuracy``, ``confusion`` and ``per_class_f1`` (see the module notes)."""
    confusion = confusion_matrix(y_true, y_pred, num_classes)
    true_positive = np.diag(confusion)
    false_positive = confusion.sum(axis=0) - true_positive
    false_negative = confusion.sum(axis=1) - true_positive
    support = 2 * true_positive + false_positive + false_negative
    present = support > 0
    per_class_f1 = np.ones(num_classes)
    per_class_f1[present] = 2 * true_positive[present] / support[present]
    total = int(confusion.sum())
    return {
        "macro_f1": float(per_class_f1[present].mean()) if present.any() else 0.0,
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "confusion": confusion.tolist(),
        "per_class_f1": [float(f) for f in per_class_f1],
        "classes_evaluated": [int(c) for c in np.flatnonzero(present)],
    }


def summarize_cases(
    per_case: Sequence[Mapping[str, Any]],
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_classes: int = 3,
) -> dict[str, Any]:
    """Every summary metric over a set of cases, always all present.

    ``per_case`` holds one :func:`segmentation_metrics` dict per case (extra keys are ignored);
    ``y_true``/``y_pred`` are the subtypes of the classified cases, which may be fewer than the
    segmented ones (e.g. when some cases have no subtype). Returns ``whole_dsc`` and
    ``lesion_dsc`` (means over cases), the :func:`classification_metrics`,
    ``combined_score``, ``n_cases`` and ``n_classified``.
    """
    summary: dict[str, Any] = {key: _mean_of(per_case, key) for key in SEGMENTATION_KEYS}
    summary.update(classification_metrics(y_true, y_pred, num_classes))
    summary["combined_score"] = combined_score(summary)
    summary["n_cases"] = len(per_case)
    summary["n_classified"] = len(y_true)
    return summary


def bootstrap_intervals(
    per_case: Sequence[Mapping[str, Any]],
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_classes: int = 3,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of the summary metrics over cases.

    The segmented cases and the classified ones are each drawn with replacement ``resamples``
    times (a fixed ``seed``: the same data give the same intervals) and every metric recomputed
    as :func:`summarize_cases` does. Returns ``{"whole_dsc": [low, high], "lesion_dsc": ...,
    "macro_f1": ..., "accuracy": ..., "level": level, "resamples": resamples}``; a metric over
    no cases gets the interval [0.0, 0.0], as its value is 0.0.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    intervals: dict[str, Any] = {}
    for key in SEGMENTATION_KEYS:
        values = np.array([float(case[key]) for case in per_case])
        draws = rng.integers(0, len(values), size=(resamples, len(values))) if len(values) else None
        means = values[draws].mean(axis=1) if draws is not None else np.zeros(1)
        intervals[key] = [float(v) for v in np.percentile(means, tails)]
    truth = _class_indices(y_true, num_classes, "y_true")
    predicted = _class_indices(y_pred, num_classes, "y_pred")
    scores: dict[str, list[float]] = {"macro_f1": [], "accuracy": []}
    for _ in range(resamples if truth.size else 1):
        pick = rng.integers(0, truth.size, size=truth.size)
        metrics = classification_metrics(truth[pick], predicted[pick], num_classes)
        for key in scores:
            scores[key].append(metrics[key])
    for key, values in scores.items():
        intervals[key] = [float(v) for v in np.percentile(values, tails)]
    intervals.update(level=level, resamples=resamples)
    return intervals


def combined_score(metrics: Mapping[str, Any]) -> float:
    """Mean of ``whole_dsc``, ``lesion_dsc`` and ``macro_f1``: the best-checkpoint criterion.

    Equal weights because the product is judged on all three targets; each is in [0, 1].
    """
    missing = [key for key in SCORE_KEYS if key not in metrics]
    if missing:
        raise KeyError(f"combined_score needs {', '.join(missing)}")
    return float(np.mean([float(metrics[key]) for key in SCORE_KEYS]))


def _mean_of(per_case: Sequence[Mapping[str, Any]], key: str) -> float:
    if not per_case:
        return 0.0
    values = []
    for index, case in enumerate(per_case):
        if key not in case:
            raise KeyError(f"per-case metrics #{index} lack {key!r}")
        values.append(float(case[key]))
    return float(np.mean(values))


def _class_indices(labels: Sequence[int], num_classes: int, name: str) -> np.ndarray:
    array = as_numpy(labels).reshape(-1)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer) and not np.all(np.mod(array, 1) == 0):
        raise ValueError(f"{name} must hold integer class indices")
    indices = array.astype(np.int64)
    if indices.min() < 0 or indices.max() >= num_classes:
        raise ValueError(f"{name} holds classes outside 0..{num_classes - 1}")
    return indices
