"""How hard are the phantoms? Two baselines a learned model must beat by far.

- The best single HU threshold, and the best HU window [lo, hi), as a pancreas segmenter:
  mean whole-pancreas DSC (labels 1 and 2 together) over a population of cases, the threshold or
  window chosen to maximise that mean over the whole population (an oracle choice).
- The best classifier on the mean HU inside the true lesion mask: two cut points split the line
  into three intervals, each interval gets a subtype (any assignment), macro F1 maximised.

Both are computed exactly from per-case histograms and cumulative counts, not by sampling.

And one check that the task is not ill-posed: :func:`unmarked_boundary_share`, how much of the
gland's outline no intensity edge marks (there a label is a guess, for a network and an annotator).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HU_LO, HU_HI = -1024, 3072  # histogram range: every int16 CT value after clipping
UNMARKED_HU = 25.0  # neighbours this close to the gland's median attenuation show no edge


@dataclass(frozen=True)
class ThresholdBaseline:
    """Predict pancreas where ``lo <= HU < hi`` (a threshold leaves one side open)."""

    lo: float
    hi: float
    mean_dice: float


@dataclass(frozen=True)
class IntervalClassifier:
    """Subtype ``assignment[i]`` for mean HU in interval i of (-inf, cuts[0]), [cuts[0], cuts[1]), [cuts[1], inf)."""

    cuts: tuple[float, float]
    assignment: tuple[int, int, int]
    macro_f1: float


def _cumulative_histograms(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per case, counts of all voxels and of reference voxels with HU below each edge."""
    edges = np.arange(HU_LO, HU_HI + step, step)
    n_bins = len(edges) - 1
    below_all, below_ref = [], []
    for image, mask in zip(images, masks, strict=True):
        # bincount on integer bin numbers: far faster than np.histogram with explicit edges.
        bins = (np.clip(image.ravel(), HU_LO, HU_HI - 1).astype(np.int64) - HU_LO) // step
        h_all = np.bincount(bins, minlength=n_bins)
        h_ref = np.bincount(bins[mask.ravel() > 0], minlength=n_bins)
        below_all.append(np.concatenate([[0], np.cumsum(h_all)]))
        below_ref.append(np.concatenate([[0], np.cumsum(h_ref)]))
    return edges, np.array(below_all, np.float64), np.array(below_ref, np.float64)


def best_threshold(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], step: int = 1
) -> ThresholdBaseline:
    """The single threshold (pancreas above it, or below it) with the best mean DSC."""
    edges, below_all, below_ref = _cumulative_histograms(images, masks, step)
    n_ref = below_ref[:, -1:]
    above_all, above_ref = below_all[:, -1:] - below_all, n_ref - below_ref
    dice_above = (2 * above_ref / np.maximum(above_all + n_ref, 1)).mean(axis=0)
    dice_below = (2 * below_ref / np.maximum(below_all + n_ref, 1)).mean(axis=0)
    k_above, k_below = int(dice_above.argmax()), int(dice_below.argmax())
    if dice_above[k_above] >= dice_below[k_below]:
        return ThresholdBaseline(float(edges[k_above]), float("inf"), float(dice_above[k_above]))
    return ThresholdBaseline(float("-inf"), float(edges[k_below]), float(dice_below[k_below]))


def best_window(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    search: tuple[int, int] = (-300, 500),
    step: int = 2,
) -> ThresholdBaseline:
    """The HU window [lo, hi) with the best mean DSC, lo and hi searched within ``search``."""
    edges, below_all, below_ref = _cumulative_histograms(images, masks, step)
    n_ref = below_ref[:, -1]  # every reference voxel, before the search range crops the tables
    keep = (edges >= search[0]) & (edges <= search[1])
    edges, below_all, below_ref = edges[keep], below_all[:, keep], below_ref[:, keep]
    dice = np.zeros((len(edges), len(edges)))
    for case_all, case_ref, total in zip(
        below_all, below_ref, n_ref, strict=True
    ):  # [lo, hi] per case
        inside_ref = case_ref[None, :] - case_ref[:, None]
        inside_all = case_all[None, :] - case_all[:, None]
        dice += 2 * inside_ref / np.maximum(inside_all + total, 1)
    dice /= len(below_all)
    dice[np.tril_indices(len(edges))] = 0  # hi must exceed lo
    lo, hi = np.unravel_index(int(dice.argmax()), dice.shape)
    return ThresholdBaseline(float(edges[lo]), float(edges[hi]), float(dice[lo, hi]))


def lesion_mean_hu(image: np.ndarray, mask: np.ndarray, lesion_label: int = 2) -> float:
    """Mean HU inside the reference lesion (NaN when there is none)."""
    inside = mask == lesion_label
    return float(image[inside].mean()) if inside.any() else float("nan")


def _macro_f1(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Macro F1 over classes (last axis); a class never predicted nor present scores 0."""
    f1 = 2 * tp / np.maximum(predicted + actual, 1)
    return f1.mean(axis=-1)


def best_interval_classifier(
    values: Sequence[float], subtypes: Sequence[int], n_classes: int = 3
) -> IntervalClassifier:
    """The best three-interval rule on a 1D feature, with any assignment of subtypes to intervals."""
    x = np.asarray(values, float)
    y = np.asarray(subtypes, int)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    uniq = np.unique(x)
    # Cut candidates: below everything, between consecutive distinct values, above everything.
    cuts = np.concatenate([[uniq[0] - 1], (uniq[:-1] + uniq[1:]) / 2, [uniq[-1] + 1]])
    onehot = np.eye(n_classes)[y]
    below = np.array([onehot[x < c].sum(axis=0) for c in cuts])  # [cut, class]
    actual = onehot.sum(axis=0)
    i, j = np.triu_indices(len(cuts))  # cut i <= cut j
    parts = [below[i], below[j] - below[i], actual - below[j]]  # 3 x [pair, class]
    best = IntervalClassifier((0.0, 0.0), (0, 0, 0), -1.0)
    for assignment in itertools.product(range(n_classes), repeat=3):
        tp = np.zeros((len(i), n_classes))
        predicted = np.zeros((len(i), n_classes))
        for part, cls in zip(parts, assignment, strict=True):
            tp[:, cls] += part[:, cls]
            predicted[:, cls] += part.sum(axis=1)
        f1 = _macro_f1(tp, predicted, actual)
        k = int(f1.argmax())
        if f1[k] > best.macro_f1:
            best = IntervalClassifier(
                (float(cuts[i[k]]), float(cuts[j[k]])), assignment, float(f1[k])
            )
    return best


def unmarked_boundary_share(
    hu: np.ndarray, label: np.ndarray, tolerance: float = UNMARKED_HU
) -> float:
    """Share of the one-voxel ring just outside the whole pancreas (labels 1 and 2) whose
    attenuation lies within ``tolerance`` HU of the gland's median (label 1): the part of the
    outline that only shape, not intensity, can place. Meant for noise-free renders."""
    from scipy import ndimage

    whole = label > 0
    ring = ndimage.binary_dilation(whole) & ~whole
    if not ring.any() or not (label == 1).any():
        return float("nan")
    reference = float(np.median(hu[label == 1]))
    return float(np.mean(np.abs(hu[ring] - reference) < tolerance))
