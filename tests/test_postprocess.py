"""Post-processing of label maps: component filtering and lesion-in-pancreas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from edgepanc.inferers.probabilities import RegionProbabilities
from edgepanc.postprocessing.labels import (
    PostprocessConfig,
    component_gaps_mm,
    keep_main_components,
    keep_main_lesions,
    mask_region_probabilities,
    postprocess_labels,
    restrict_lesion_to_pancreas,
    voxel_volume_ml,
)

SPACING = (1.0, 1.0, 1.0)  # 1 mm^3 voxels: 1000 voxels = 1 ml


def _volume() -> np.ndarray:
    labels = np.zeros((20, 40, 40), dtype=np.uint8)
    labels[2:18, 2:22, 2:22] = 1  # main pancreas: 6400 voxels
    labels[8:12, 8:12, 8:12] = 2  # lesion inside it
    return labels


def test_voxel_volume_ml() -> None:
    assert voxel_volume_ml((2.0, 1.0, 0.5)) == 0.001


def test_second_large_component_kept() -> None:
    labels = _volume()
    labels[2:18, 26:38, 26:38] = 1  # second large part: 2304 voxels, > 10 % and > 1 ml
    out = keep_main_components(labels, SPACING, min_fraction=0.1, min_volume_ml=1.0)
    assert out[10, 30, 30] == 1  # the second large part survives
    assert np.array_equal(out[:, :24, :24], labels[:, :24, :24])  # main part untouched


def test_large_component_far_from_the_gland_removed() -> None:
    labels = np.zeros((20, 40, 120), dtype=np.uint8)
    labels[2:18, 2:22, 2:22] = 1  # the gland: 6400 voxels
    labels[2:18, 2:22, 30:42] = 1  # a split-off half 8 mm away: kept
    labels[2:18, 2:22, 80:100] = 1  # gland-sized, 58 mm away: a false positive elsewhere
    out = keep_main_components(labels, SPACING, min_fraction=0.25, min_volume_ml=1.0)
    assert out[10, 10, 35] == 1 and out[10, 10, 90] == 0
    assert np.array_equal(out[:, :, :60], labels[:, :, :60])
    anywhere = keep_main_components(labels, SPACING, 0.25, 1.0, max_gap_mm=None)
    assert np.array_equal(anywhere, labels)
    # the gap is measured in millimetres: at 0.5 mm voxels the far block lies 29 mm away
    assert keep_main_components(labels, (0.5, 0.5, 0.5), 0.25, 0.0, max_gap_mm=30.0)[10, 10, 90]


def test_component_gaps_match_a_brute_force_distance() -> None:
    rng = np.random.default_rng(5)
    mask = rng.random((12, 20, 24)) < 0.02
    mask[4:8, 8:12, 8:12] = True  # the largest
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    main = int(np.bincount(components.ravel())[1:].argmax()) + 1
    spacing = (2.0, 1.2, 0.8)
    gaps = component_gaps_mm(components, main, count, spacing, reach_mm=6.0)
    main_points = np.argwhere(components == main) * spacing
    for label in range(1, count + 1):
        points = np.argwhere(components == label) * spacing
        nearest = np.sqrt(((points[:, None] - main_points[None]) ** 2).sum(-1)).min()
        expected = nearest if nearest <= 6.0 else np.inf
        assert gaps[label - 1] == pytest.approx(expected)


def test_isolated_speck_removed() -> None:
    labels = _volume()
    labels[15:17, 35:37, 35:37] = 1  # 8 voxels, not touching anything
    out = keep_main_components(labels, SPACING)
    assert out[15:17, 35:37, 35:37].sum() == 0
    assert (out == 2).sum() == (labels == 2).sum()


def test_absolute_threshold_removes_component_above_fraction() -> None:
    labels = np.zeros((10, 30, 30), dtype=np.uint8)
    labels[0:10, 0:10, 0:10] = 1  # 1000 voxels
    labels[0:5, 20:25, 20:28] = 1  # 200 voxels: 20 % of the largest but only 0.2 ml
    kept = keep_main_components(labels, SPACING, 0.1, min_volume_ml=0.0, max_gap_mm=None)
    dropped = keep_main_components(labels, SPACING, 0.1, min_volume_ml=0.5, max_gap_mm=None)
    assert kept[2, 22, 22] == 1
    assert dropped[2, 22, 22] == 0


def test_lesion_and_pancreas_count_as_one_organ() -> None:
    labels = np.zeros((10, 30, 30), dtype=np.uint8)
    labels[0:10, 0:10, 0:10] = 1
    labels[0:10, 10:14, 0:10] = 2  # lesion touching the pancreas: same component
    out = keep_main_components(labels, SPACING, min_fraction=0.9, min_volume_ml=100.0)
    assert np.array_equal(out, labels)


def test_lesion_outside_pancreas_removed_touching_kept() -> None:
    labels = _volume()
    labels[2:6, 24:28, 24:28] = 2  # touches nothing (pancreas ends at x=21)
    labels[10:12, 10:12, 22:24] = 2  # touches the pancreas face at x=21
    out = restrict_lesion_to_pancreas(labels)
    assert out[3, 25, 25] == 0
    assert out[10, 10, 22] == 2
    assert out[9, 9, 9] == 2  # inside lesion kept


def test_small_lesion_components_become_pancreas() -> None:
    labels = _volume()  # main lesion: 64 voxels
    labels[4:6, 4:6, 4:6] = 2  # 8 voxels: under a quarter of the largest
    labels[14:17, 14:17, 14:16] = 2  # 18 voxels: over a quarter
    before = labels.copy()
    out = keep_main_lesions(labels, 0.25)
    assert out[4, 4, 4] == 1 and out[15, 15, 15] == 2 and out[9, 9, 9] == 2
    assert np.array_equal(out > 0, labels > 0)  # the gland is unchanged
    assert np.array_equal(labels, before)
    assert np.array_equal(keep_main_lesions(labels, 0.0), labels)
    assert postprocess_labels(labels, SPACING, PostprocessConfig())[4, 4, 4] == 1
    kept_all = PostprocessConfig(lesion_min_fraction=0)
    assert postprocess_labels(labels, SPACING, kept_all)[4, 4, 4] == 2


def test_switches_and_input_untouched() -> None:
    labels = _volume()
    labels[15:17, 35:37, 35:37] = 2  # isolated lesion speck
    before = labels.copy()
    off = postprocess_labels(
        labels,
        SPACING,
        PostprocessConfig(largest_component=False, lesion_in_pancreas=False, lesion_min_fraction=0),
    )
    assert np.array_equal(off, before)
    on = postprocess_labels(labels, SPACING, PostprocessConfig())
    assert on[16, 36, 36] == 0
    only_lesion = postprocess_labels(labels, SPACING, PostprocessConfig(largest_component=False))
    assert only_lesion[16, 36, 36] == 0
    assert np.array_equal(labels, before)


def test_empty_prediction_stays_empty() -> None:
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    assert not postprocess_labels(labels, SPACING, PostprocessConfig()).any()


def test_region_probabilities_keep_one_voxel_round_the_kept_regions() -> None:
    raw = _volume()
    raw[2:4, 30:34, 30:34] = 1  # a speck post-processing removes
    raw[3, 32, 32] = 2
    labels = postprocess_labels(raw, SPACING, PostprocessConfig())
    assert labels[2:4, 30:34, 30:34].max() == 0
    box = (slice(1, 19), slice(0, 38), slice(1, 40))
    values = np.full((2, 18, 38, 39), 200, dtype=np.uint8)
    soft = RegionProbabilities(values, box)
    masked = mask_region_probabilities(soft, labels)
    assert (values == 200).all()  # the input is left alone
    near_organ = np.zeros(labels.shape, bool)
    near_organ[1:19, 1:23, 1:23] = True  # the gland grown by one voxel (26-neighbourhood)
    near_lesion = np.zeros(labels.shape, bool)
    near_lesion[7:13, 7:13, 7:13] = True
    for index, near in enumerate((near_organ, near_lesion)):
        expected = np.where(near[box], 200, 0)
        np.testing.assert_array_equal(masked.values[index], expected)
    assert masked.box == box


def test_postprocessing_the_labels_box_equals_postprocessing_the_whole_grid() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros((40, 60, 50), dtype=np.uint8)
    for _ in range(12):  # blobs of pancreas, some with lesion, some far apart
        z, y, x = rng.integers(8, 32), rng.integers(8, 52), rng.integers(8, 42)
        r = int(rng.integers(1, 6))
        labels[z - r : z + r, y - r : y + r, x - r : x + r] = 1
        if rng.random() < 0.5:
            labels[z - 1 : z + 1, y + r - 1 : y + r + 2, x : x + 2] = 2  # some poke out
    labels[30:33, 2:5, 40:44] = 2  # a lesion alone
    config = PostprocessConfig(min_volume_ml=0.01)
    whole = keep_main_lesions(
        restrict_lesion_to_pancreas(
            keep_main_components(labels, SPACING, config.min_fraction, config.min_volume_ml)
        ),
        config.lesion_min_fraction,
    )
    result = postprocess_labels(labels, SPACING, config)
    assert 0 < (result > 0).sum() < (labels > 0).sum() and (result == 2).any()
    np.testing.assert_array_equal(result, whole)
    empty = np.zeros((4, 5, 6), np.uint8)
    assert not postprocess_labels(empty, SPACING, config).any()
