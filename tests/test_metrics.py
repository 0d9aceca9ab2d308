"""Metrics: hand-computed examples, empty masks and case lists, missing subtypes, never NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgepanc.metrics import (
    bootstrap_intervals,
    classification_metrics,
    combined_score,
    confusion_matrix,
    dice,
    segmentation_metrics,
    summarize_cases,
)


def test_dice_hand_computed():
    pred = np.array([1, 1, 1, 0, 0], dtype=bool)
    ref = np.array([0, 1, 1, 1, 0], dtype=bool)
    # |A & B| = 2, |A| + |B| = 6
    assert dice(pred, ref) == pytest.approx(4 / 6)


def test_dice_empty_masks():
    empty = np.zeros((2, 3, 4), dtype=bool)
    full = np.ones((2, 3, 4), dtype=bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, full) == 0.0
    assert dice(full, empty) == 0.0


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_segmentation_metrics_hand_computed():
    ref = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    pred = np.array([0, 1, 1, 2, 2, 0, 1, 0])
    # whole {1,2}: ref 5 voxels (idx 1-5), pred 5 (idx 1-4, 6), overlap 4 -> 8/10
    # lesion {2}: ref idx 4-5, pred idx 3-4, overlap 1 -> 2/4
    metrics = segmentation_metrics(pred, ref)
    assert metrics == {"whole_dsc": pytest.approx(0.8), "lesion_dsc": pytest.approx(0.5)}


def test_segmentation_metrics_no_lesion_in_either_counts_as_perfect():
    ref = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    assert segmentation_metrics(ref.copy(), ref)["lesion_dsc"] == 1.0
    missed = segmentation_metrics(ref, np.array([[0, 2], [1, 0]]))
    assert missed["lesion_dsc"] == 0.0


def test_segmentation_metrics_accepts_torch_tensors():
    ref = torch.tensor([0, 1, 2, 2])
    pred = torch.tensor([0, 1, 2, 0])
    metrics = segmentation_metrics(pred, ref)
    assert metrics["whole_dsc"] == pytest.approx(2 * 2 / 5)
    assert metrics["lesion_dsc"] == pytest.approx(2 * 1 / 3)


def test_confusion_rows_are_truth():
    matrix = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1])
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_classification_metrics_hand_computed():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    metrics = classification_metrics(y_true, y_pred)
    # class 0: TP1 FP1 FN1 -> 2/4; class 1: TP2 FP1 FN0 -> 4/5; class 2: TP1 FP0 FN1 -> 2/3
    expected_f1 = [0.5, 0.8, 2 / 3]
    assert metrics["per_class_f1"] == pytest.approx(expected_f1)
    assert metrics["macro_f1"] == pytest.approx(sum(expected_f1) / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["classes_evaluated"] == [0, 1, 2]


def test_missing_subtype_is_left_out_of_macro_f1():
    # Subtype 2 appears neither in truth nor prediction: it cannot drag the mean down.
    metrics = classification_metrics([0, 1, 1], [0, 1, 0])
    f1_class0 = 2 * 1 / (2 * 1 + 1 + 0)
    f1_class1 = 2 * 1 / (2 * 1 + 0 + 1)
    assert metrics["macro_f1"] == pytest.approx((f1_class0 + f1_class1) / 2)
    assert metrics["classes_evaluated"] == [0, 1]
    assert metrics["per_class_f1"][2] == 1.0


def test_predicted_but_absent_subtype_counts_as_zero():
    # Subtype 2 is predicted but never true: F1 = 0 for it, and it stays in the mean.
    metrics = classification_metrics([0, 0], [0, 2])
    assert metrics["per_class_f1"][2] == 0.0
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_classification_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside 0..2"):
        classification_metrics([0, 3], [0, 1])
    with pytest.raises(ValueError, match="entries"):
        classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="integer"):
        classification_metrics([0.5], [0])


def test_summary_of_cases():
    per_case = [
        {"whole_dsc": 0.9, "lesion_dsc": 0.4, "name": "a"},
        {"whole_dsc": 0.7, "lesion_dsc": 0.2},
    ]
    summary = summarize_cases(per_case, [0, 1], [0, 1])
    assert summary["whole_dsc"] == pytest.approx(0.8)
    assert summary["lesion_dsc"] == pytest.approx(0.3)
    assert summary["macro_f1"] == 1.0 and summary["accuracy"] == 1.0
    assert summary["combined_score"] == pytest.approx((0.8 + 0.3 + 1.0) / 3)
    assert summary["n_cases"] == 2 and summary["n_classified"] == 2


def test_summary_of_no_cases_is_defined():
    summary = summarize_cases([], [], [])
    for key in ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy", "combined_score"):
        assert summary[key] == 0.0, key
    assert summary["confusion"] == [[0, 0, 0]] * 3
    assert summary["n_cases"] == 0


def test_summary_reports_a_case_without_metrics():
    with pytest.raises(KeyError, match="#1 lack 'lesion_dsc'"):
        summarize_cases([{"whole_dsc": 1, "lesion_dsc": 1}, {"whole_dsc": 1}], [], [])


def test_metrics_are_never_nan_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(0, 6))
        ref = rng.integers(0, 3, size=(3, 4, 5))
        pred = rng.integers(0, 3, size=(3, 4, 5)) * rng.integers(0, 2)  # sometimes all zero
        per_case = [segmentation_metrics(pred, ref)]
        summary = summarize_cases(per_case, rng.integers(0, 3, n), rng.integers(0, 3, n))
        numbers = [v for v in summary.values() if isinstance(v, float)]
        numbers += summary["per_class_f1"]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in numbers), summary


def test_combined_score_needs_all_three():
    assert combined_score({"whole_dsc": 0.9, "lesion_dsc": 0.3, "macro_f1": 0.6}) == pytest.approx(
        0.6
    )
    with pytest.raises(KeyError, match="macro_f1"):
        combined_score({"whole_dsc": 0.9, "lesion_dsc": 0.3})


def test_bootstrap_intervals_narrow_with_more_cases_and_are_reproducible() -> None:
    rng = np.random.default_rng(0)
    per_case = [{"whole_dsc": w, "lesion_dsc": w / 2} for w in rng.uniform(0.8, 0.95, 12)]
    truth = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    predicted = [0, 0, 1, 0, 1, 2, 1, 1, 2, 0, 2, 2]
    small = bootstrap_intervals(per_case, truth, predicted)
    assert small == bootstrap_intervals(per_case, truth, predicted)  # fixed seed
    summary = summarize_cases(per_case, truth, predicted)
    for key in ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy"):
        low, high = small[key]
        assert 0.0 <= low < summary[key] < high <= 1.0, key
    # the same cases four times over: the same centre, about half the width
    large = bootstrap_intervals(per_case * 4, truth * 4, predicted * 4)
    for key in ("whole_dsc", "macro_f1"):
        ratio = (large[key][1] - large[key][0]) / (small[key][1] - small[key][0])
        assert 0.35 < ratio < 0.7, (key, ratio)
    assert small["level"] == 0.95 and small["resamples"] == 2000


def test_bootstrap_intervals_of_constant_or_empty_data_have_no_width() -> None:
    same = [{"whole_dsc": 0.9, "lesion_dsc": 0.4}] * 5
    intervals = bootstrap_intervals(same, [1] * 5, [1] * 5)
    assert intervals["whole_dsc"] == pytest.approx([0.9, 0.9])
    assert intervals["macro_f1"] == [1.0, 1.0]
    empty = bootstrap_intervals([], [], [])
    assert all(empty[key] == [0.0, 0.0] for key in ("whole_dsc", "lesion_dsc", "macro_f1"))
    with pytest.raises(ValueError, match="level"):
        bootstrap_intervals(same, [1] * 5, [1] * 5, level=1.0)
