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

Surfaces (:func:`surface_metrics`, computed by DeepMind's ``surface-distance`` library on the
voxel spacing in mm):

- ``hd95``: the 95th percentile of the symmetric surface distances, in mm; None (undefined, left
  out of means) when either mask is empty, 0.0 when both are.
- ``nsd``: normalised surface Dice at a tolerance in mm: the share of both surfaces lying within
  the tolerance of the other; 1.0 when both masks are empty, 0.0 when exactly one is.

Lesions (:func:`lesion_detection`): each connected component (26-connected) of the reference
lesion is a lesion, ``hit`` when any predicted lesion voxel overlaps it, else missed; each
predicted lesion component touching no reference lesion is a false positive. Sizes are
equivalent diameters ``(6 V / pi) ** (1/3)`` in mm, binned by :data:`SIZE_BINS_MM`.

:func:`bootstrap_intervals` says how far a summary can be trusted: with 12 validation cases one
case moves macro F1 by about 0.08.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

WHOLE_LABELS = (1, 2)
LESION_LABEL = 2
SEGMENTATION_KEYS = ("whole_dsc", "lesion_dsc")
# The metrics combined_score() averages, all in [0, 1] with higher better.
SCORE_KEYS = ("whole_dsc", "lesion_dsc", "macro_f1")
# Lesion size bins by equivalent diameter (mm): < 10, 10-20, >= 20; small lesions are the ones
# a segmentation Dice hides, so detection is reported per bin.
SIZE_BINS_MM = (10.0, 20.0)
NSD_TOLERANCE_MM = 2.0  # about one voxel of the network's grid: a boundary off by less is right


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


def surface_metrics(
    pred_mask: Any,
    ref_mask: Any,
    spacing_zyx: Sequence[float],
    tolerance_mm: float = NSD_TOLERANCE_MM,
) -> dict[str, float | None]:
    """``hd95`` (mm, None where undefined) and ``nsd`` of two boolean masks (see the module notes).

    Example: two 10-voxel cubes at 1 mm, one shifted by 3 voxels along x ->
    ``{"hd95": 3.0, "nsd": ...}``.
    """
    from surface_distance import metrics as surface  # DeepMind's surface-distance

    pred = as_numpy(pred_mask).astype(bool, copy=False)
    ref = as_numpy(ref_mask).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, reference {ref.shape}")
    if not pred.any() or not ref.any():
        both_empty = not pred.any() and not ref.any()
        return {"hd95": 0.0 if both_empty else None, "nsd": 1.0 if both_empty else 0.0}
    with warnings.catch_warnings():
        # surface-distance 0.1 reaches distance_transform_edt through a scipy path deprecated in
        # 1.x; the result is the same, and the notice is nothing a user of edgepanc can act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="surface_distance")
        distances = surface.compute_surface_distances(ref, pred, [float(s) for s in spacing_zyx])
    return {
        "hd95": float(surface.compute_robust_hausdorff(distances, 95)),
        "nsd": float(surface.compute_surface_dice_at_tolerance(distances, tolerance_mm)),
    }


def size_bin(diameter_mm: float) -> str:
    """The name of the :data:`SIZE_BINS_MM` bin a lesion of this equivalent diameter falls in.

    Example: ``size_bin(7.0)`` -> ``"<10 mm"``; ``size_bin(12.5)`` -> ``"10-20 mm"``.
    """
    low, high = SIZE_BINS_MM
    if diameter_mm < low:
        return f"<{low:g} mm"
    return f"{low:g}-{high:g} mm" if diameter_mm < high else f">={high:g} mm"


def size_bins() -> list[str]:
    """Every bin name, smallest first. Example: ``size_bins()[0]`` -> ``"<10 mm"``."""
    low, high = SIZE_BINS_MM
    return [size_bin(low / 2), size_bin(low), size_bin(high)]


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))


def _diameter_mm(voxels: int, voxel_ml: float) -> float:
    volume_mm3 = voxels * voxel_ml * 1000.0
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))


def lesion_detection(
    pred_labels: Any, ref_labels: Any, spacing_zyx: Sequence[float]
) -> dict[str, list[dict[str, Any]]]:
    """Every reference lesion (hit or missed) and every false-positive predicted lesion of a case.

    Returns ``{"lesions": [{"diameter_mm", "bin", "hit"}, ...], "false_positives": [{"diameter_mm",
    "bin"}, ...]}``, each ordered by component label (see the module notes).

    Example: a reference with one 6 mm lesion the prediction overlaps and a prediction with one
    more blob -> ``{"lesions": [{"diameter_mm": 6.0, "bin": "<10 mm", "hit": True}],
    "false_positives": [{"diameter_mm": 4.1, "bin": "<10 mm"}]}``.
    """
    pred = as_numpy(pred_labels) == LESION_LABEL
    ref = as_numpy(ref_labels) == LESION_LABEL
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, reference {ref.shape}")
    voxel_ml = float(np.prod([float(s) for s in spacing_zyx])) / 1000.0
    found: dict[str, list[dict[str, Any]]] = {"lesions": [], "false_positives": []}
    for mask, other, key in ((ref, pred, "lesions"), (pred, ref, "false_positives")):
        labels, count = _components(mask)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        touching = np.bincount(labels[other].ravel(), minlength=count + 1) > 0
        for index in range(1, count + 1):
            diameter = _diameter_mm(int(sizes[index]), voxel_ml)
            record: dict[str, Any] = {"diameter_mm": round(diameter, 3), "bin": size_bin(diameter)}
            if key == "lesions":
                found[key].append({**record, "hit": bool(touching[index])})
            elif not touching[index]:
                found[key].append(record)
    return found


def summarize_detection(per_case: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Lesions, hits, misses, sensitivity and false positives per size bin and over all sizes.

    ``per_case`` holds :func:`lesion_detection` results. Sensitivity is None for a bin with no
    reference lesion (nothing to detect, nothing to average).

    Example: ``summarize_detection([lesion_detection(pred, ref, (1, 1, 1))])["all"]`` ->
    ``{"lesions": 2, "hit": 1, "missed": 1, "sensitivity": 0.5, "false_positives": 1}``.
    """
    rows = {name: {"lesions": 0, "hit": 0, "false_positives": 0} for name in [*size_bins(), "all"]}
    for case in per_case:
        for lesion in case["lesions"]:
            for name in (lesion["bin"], "all"):
                rows[name]["lesions"] += 1
                rows[name]["hit"] += int(lesion["hit"])
        for blob in case["false_positives"]:
            for name in (blob["bin"], "all"):
                rows[name]["false_positives"] += 1
    for row in rows.values():
        row["missed"] = row["lesions"] - row["hit"]
        row["sensitivity"] = row["hit"] / row["lesions"] if row["lesions"] else None
    return rows


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when none is.

    Example: ``mean_defined([2.0, None, 4.0])`` -> ``3.0``.
    """
    defined = [float(v) for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


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
