"""The subtype read-out: tiles weighted by the lesion the written mask keeps."""

from __future__ import annotations

import numpy as np
import pytest

from edgepanc.inferers.probabilities import RegionProbabilities
from edgepanc.inferers.sliding_window import SlidingWindowResult
from edgepanc.postprocessing.subtype import classify_from_tiles, kept_lesion_mass


def _tiles_and_kept(lesion_in_labels: bool):
    """Three 4^3 tiles along x; the kept lesion map has 8 voxels in tile 0 and 1 in tile 2."""
    labels = np.zeros((4, 4, 12), dtype=np.uint8)
    values = np.zeros((2, 4, 4, 12), dtype=np.uint8)
    values[1, 0:2, 0:2, 0:2] = 255
    values[1, 3, 3, 9] = 255
    labels[values[1] > 0] = 2 if lesion_in_labels else 1
    result = SlidingWindowResult(
        labels=labels.copy(),
        # tile 0 saw most lesion and says subtype 1; the others say subtype 2
        tile_cls_logits=np.array([[0.0, 4.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 3.0]], np.float32),
        tiles=[(0, 0, 0), (0, 0, 4), (0, 0, 8)],
        importance=np.ones((4, 4, 4), dtype=np.float32),
    )
    return result, labels, RegionProbabilities(values, (slice(0, 4), slice(0, 4), slice(0, 12)))


def test_classification_weights_tiles_by_lesion_mass():
    result, labels, kept = _tiles_and_kept(lesion_in_labels=True)
    probs = classify_from_tiles(result, labels, kept)
    assert probs.shape == (3,) and probs.sum() == pytest.approx(1.0)
    assert probs.argmax() == 1
    mean = (8 * np.array([0, 4, 0]) + 1 * np.array([0, 0, 3])) / 9
    np.testing.assert_allclose(probs, np.exp(mean) / np.exp(mean).sum(), rtol=1e-5)


def test_classification_without_lesion_uses_uniform_weights():
    result, labels, kept = _tiles_and_kept(lesion_in_labels=False)
    probs = classify_from_tiles(result, labels, kept)
    mean = np.array([0.0, 4.0, 6.0]) / 3
    np.testing.assert_allclose(probs, np.exp(mean) / np.exp(mean).sum(), rtol=1e-5)
    assert probs.argmax() == 2
    result.importance = None
    with pytest.raises(ValueError, match="importance"):
        classify_from_tiles(result, labels, kept)


def test_kept_lesion_mass_is_the_windowed_sum_of_the_kept_map():
    rng = np.random.default_rng(3)
    shape, patch = (10, 12, 14), (4, 6, 6)
    box = (slice(2, 9), slice(1, 12), slice(3, 10))
    values = rng.integers(0, 256, size=(2, 7, 11, 7), dtype=np.uint8)
    kept = RegionProbabilities(values, box)
    importance = rng.random(patch).astype(np.float32)
    tiles = [(-2, 0, 0), (0, 0, 0), (6, 6, 8), (8, 10, 10), (0, 0, 10)]  # last: outside the box
    whole = np.zeros((shape[0] + 8, shape[1] + 8, shape[2] + 8))  # room for tiles past the edges
    whole[tuple(slice(s.start + 2, s.stop + 2) for s in box)] = values[1] / 255.0
    expected = [
        float(
            (
                whole[tuple(slice(c + 2, c + 2 + p) for c, p in zip(t, patch, strict=True))]
                * importance
            ).sum()
        )
        for t in tiles
    ]
    mass = kept_lesion_mass(kept, tiles, importance)
    np.testing.assert_allclose(mass, expected, rtol=1e-5)
    assert mass[-1] == 0.0 and mass[2] > 0


def test_classification_follows_the_lesion_post_processing_kept():
    # tile 0 predicted most lesion (a false lesion that post-processing removed); tile 2 holds
    # the lesion of the written mask: with the kept maps the subtype is tile 2's.
    result = SlidingWindowResult(
        labels=np.zeros((4, 4, 12), dtype=np.uint8),
        tile_cls_logits=np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]], np.float32),
        tiles=[(0, 0, 0), (0, 0, 4), (0, 0, 8)],
        importance=np.ones((4, 4, 4), dtype=np.float32),
    )
    labels = np.zeros((4, 4, 12), dtype=np.uint8)
    labels[1:3, 1:3, 9:11] = 2
    values = np.zeros((2, 4, 4, 12), dtype=np.uint8)
    values[:, 1:3, 1:3, 9:11] = 255
    kept = RegionProbabilities(values, (slice(0, 4), slice(0, 4), slice(0, 12)))
    result.labels[:] = labels
    result.labels[0, 0, 0] = 2  # the raw prediction's false lesion
    assert classify_from_tiles(result, labels, kept).argmax() == 2
    no_lesion = np.zeros_like(labels)
    uniform = classify_from_tiles(
        result, no_lesion, RegionProbabilities(np.zeros_like(values), kept.box)
    )
    mean = np.array([5.0, 0.0, 3.0]) / 3
    np.testing.assert_allclose(uniform, np.exp(mean) / np.exp(mean).sum(), rtol=1e-5)
