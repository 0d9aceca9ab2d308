"""The lesion margin: a predicted lesion grown into the gland by a distance set per subtype, in
the one finishing step, and chosen per predicted subtype on the cases that choose the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from edgepanc.inferers.probabilities import RegionProbabilities
from edgepanc.inferers.sliding_window import SlidingWindowResult
from edgepanc.postprocessing import finish_prediction
from edgepanc.postprocessing.lesion_margin import (
    grow_lesion,
    margin_for,
    raise_lesion_probability,
)
from edgepanc.training.lesion_margins import MarginChoice, choose_margins

from runtime_support import phantom, threshold_model, write_image


def _gland_with_lesion() -> np.ndarray:
    labels = np.zeros((9, 9, 9), dtype=np.uint8)
    labels[1:8, 1:8, 1:6] = 1  # the gland; x = 6..8 is background
    labels[4, 4, 5] = 2  # at the gland's edge along x
    return labels


def test_grow_lesion_takes_the_gland_within_the_margin_and_never_the_background():
    labels = _gland_with_lesion()
    grown = grow_lesion(labels, (1.0, 1.0, 1.0), 1.0)
    assert np.count_nonzero(grown == 2) == 1 + 5  # six face neighbours, one of them background
    assert grown[4, 4, 4] == 2 and grown[4, 4, 6] == 0  # the organ's outline does not move
    assert grown[5, 5, 5] == 1  # a diagonal neighbour is 1.41 mm away
    np.testing.assert_array_equal(grown > 0, labels > 0)
    assert np.count_nonzero(labels == 2) == 1  # the input is not modified
    # in mm, per axis: 2.0 mm reaches one voxel along z at 2 mm spacing and two along y and x
    grown = grow_lesion(labels, (2.0, 1.0, 1.0), 2.0)
    assert grown[5, 4, 5] == 2 and grown[6, 4, 5] == 1 and grown[4, 2, 5] == 2
    np.testing.assert_array_equal(grow_lesion(labels, (1.0, 1.0, 1.0), 0.0), labels)
    no_lesion = np.where(labels == 2, 1, labels).astype(np.uint8)
    np.testing.assert_array_equal(grow_lesion(no_lesion, (1.0, 1.0, 1.0), 3.0), no_lesion)


def test_margin_for_reads_the_subtype_and_no_margins_means_none():
    assert margin_for((0.0, 1.5, 2.5), 2) == 2.5
    assert margin_for((), 2) == 0.0


def test_raise_lesion_probability_makes_the_grown_voxels_certain_inside_the_box():
    values = np.full((2, 4, 4, 4), 100, dtype=np.uint8)
    box = (slice(2, 6), slice(0, 4), slice(0, 4))
    grown = np.zeros((8, 4, 4), dtype=bool)
    grown[3, 1, 1] = True
    raised = raise_lesion_probability(RegionProbabilities(values, box), grown)
    assert raised.values[1, 1, 1, 1] == 255 and raised.values[0, 1, 1, 1] == 100
    assert np.count_nonzero(raised.values == 255) == 1
    assert values[1, 1, 1, 1] == 100  # a new object


def _result(subtype: int) -> SlidingWindowResult:
    labels = _gland_with_lesion()
    values = np.zeros((2, *labels.shape), dtype=np.uint8)
    values[0][labels >= 1] = 230
    values[1][labels == 2] = 200
    logits = np.zeros((1, 3), dtype=np.float32)
    logits[0, subtype] = 5.0
    return SlidingWindowResult(
        labels=labels,
        tile_cls_logits=logits,
        tiles=[(0, 0, 0)],
        probabilities=RegionProbabilities(values, tuple(slice(0, 9) for _ in range(3))),  # type: ignore[arg-type]
        importance=np.ones((9, 9, 9), dtype=np.float32),
    )


def test_finishing_grows_the_lesion_by_the_margin_of_the_subtype_it_reads():
    margins = (0.0, 0.0, 1.0)
    named_2 = finish_prediction(_result(2), (1.0, 1.0, 1.0), lesion_margins_mm=margins)
    assert named_2.subtype == 2
    assert np.count_nonzero(named_2.labels == 2) == 6
    lesion_map = named_2.region_probabilities.values[1]
    assert lesion_map[4, 4, 4] == 255 and lesion_map[4, 4, 5] == 200  # grown certain, core kept
    named_0 = finish_prediction(_result(0), (1.0, 1.0, 1.0), lesion_margins_mm=margins)
    assert named_0.subtype == 0 and np.count_nonzero(named_0.labels == 2) == 1
    unmarked = finish_prediction(_result(2), (1.0, 1.0, 1.0))
    assert np.count_nonzero(unmarked.labels == 2) == 1
    np.testing.assert_array_equal(unmarked.subtype_probabilities, named_2.subtype_probabilities)


def test_choose_margins_keeps_the_best_margin_per_predicted_subtype():
    candidates = (0.0, 1.0, 2.0)
    dice = np.array(
        [
            [0.6, 0.5, 0.4],  # subtype 0: growing hurts
            [0.7, 0.6, 0.5],
            [0.8, 0.7, 0.6],
            [0.4, 0.5, 0.6],  # subtype 2: 2 mm best
            [0.3, 0.5, 0.55],
            [0.5, 0.55, 0.5],
            [0.1, 0.9, 0.9],  # subtype 1: two cases only, too few to choose a margin
            [0.2, 0.9, 0.9],
        ]
    )
    predicted = [0, 0, 0, 2, 2, 2, 1, 1]
    choice = choose_margins(dice, predicted, 3, candidates, min_cases=3)
    assert choice.margins_mm == (0.0, 0.0, 2.0)
    assert choice.cases == (3, 2, 3)
    np.testing.assert_allclose(choice.curves[2], dice[3:6].mean(axis=0))
    assert choice.candidates_mm == candidates
    assert choice.lesion_dsc_without == pytest.approx(dice[:, 0].mean())
    expected = np.r_[dice[:3, 0], dice[3:6, 2], dice[6:, 0]].mean()
    assert choice.lesion_dsc_with == pytest.approx(expected)
    assert choice.gain == pytest.approx(expected - dice[:, 0].mean())
    # a tie goes to the smaller margin
    tied = choose_margins(np.array([[0.5, 0.6, 0.6]] * 3), [2, 2, 2], 3, candidates)
    assert tied.margins_mm == (0.0, 0.0, 1.0)
    assert "subtype 2 1 mm (3 cases)" in tied.line("validation")
    with pytest.raises(ValueError, match="candidates"):
        choose_margins(dice, predicted, 3, (1.0, 2.0, 3.0))


def test_margin_choice_record_is_plain_data_with_the_curve_it_chose_from():
    record = MarginChoice(
        (0.0, 0.0, 2.5), (4, 5, 3), 0.4, 0.45, (0.0, 2.5), ((0.5, 0.4), (), (0.3, 0.41234))
    ).to_dict()
    assert record == {
        "margins_mm": [0.0, 0.0, 2.5],
        "cases": [4, 5, 3],
        "lesion_dsc_without": 0.4,
        "lesion_dsc_with": 0.45,
        "candidates_mm": [0.0, 2.5],
        "curves": [[0.5, 0.4], [], [0.3, 0.4123]],
    }
    json.dumps(record)


def test_run_and_baseline_grow_the_lesion_by_the_bundles_margin_alike(tmp_path, monkeypatch):
    """A bundle's margins (4 mm: one voxel of the tiny plan's grid) reach the runtime and the
    baseline: the same grown mask from both,
    more lesion voxels than without, and the same gland."""
    import dataclasses

    from edgepanc.bundle import load_bundle, save_bundle_metadata
    from edgepanc.runtime import baseline
    from edgepanc.runtime.pipeline import RunConfig, run_case
    from edgepanc.runtime.roi import RoiConfig
    from edgepanc.thermal import ThermalGuard

    from runtime_support import ThresholdPredictor, make_tiny_bundle

    scan = write_image(phantom(), tmp_path / "ct_0000.nii.gz")
    masks = {}
    for name, margins in (("plain", ()), ("grown", (4.0, 4.0, 4.0))):
        model = dataclasses.replace(threshold_model(), lesion_margins_mm=margins)
        (tmp_path / name).mkdir()
        report = run_case(
            scan,
            model,
            RunConfig(out_dir=tmp_path / name, roi=RoiConfig(mode="off")),
            ThermalGuard([]),
        )
        masks[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(report.mask)))
        assert report.lesion_margin_mm == (4.0 if margins else 0.0)  # the case JSON says so
    plain, grown = masks["plain"], masks["grown"]
    assert np.count_nonzero(grown == 2) > np.count_nonzero(plain == 2) > 0
    np.testing.assert_array_equal(grown > 0, plain > 0)
    assert np.all(grown[plain == 2] == 2)

    bundle = load_bundle(make_tiny_bundle(tmp_path / "bundle"))
    bundle.lesion_margins_mm = (4.0, 4.0, 4.0)
    save_bundle_metadata(bundle)
    monkeypatch.setattr(baseline, "load_baseline_predictor", lambda bundle: ThresholdPredictor())
    reference = baseline.run_baseline(scan, bundle.path, tmp_path / "baseline")
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(reference.mask))), grown
    )
