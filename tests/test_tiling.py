"""Tiling geometry: step semantics, coverage, z-major order, importance map, padding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepanc.inferers.sliding_window import frame_volume, plan_sliding_window
from edgepanc.inferers.tiling import (
    compute_steps_for_sliding_window,
    covering_steps,
    gaussian_importance_map,
    tile_window,
)

SIZES = [(64, 64), (100, 32), (33, 32), (250, 96), (97, 40)]


@pytest.mark.parametrize("image,patch", SIZES)
@pytest.mark.parametrize("step_fraction", [0.5, 0.25, 1.0])
def test_steps_span_image_evenly_with_fewest_tiles(image: int, patch: int, step_fraction: float):
    (steps,) = compute_steps_for_sliding_window([image], [patch], step_fraction)
    assert steps[0] == 0
    assert steps[-1] == image - patch  # the last tile ends exactly at the image end
    gaps = np.diff(steps)
    assert np.all(gaps > 0) or len(steps) == 1
    # rounding may move a start by one voxel, never more
    assert np.all(gaps <= math.ceil(step_fraction * patch))
    # one tile fewer would need a step larger than allowed: the count is minimal
    if len(steps) > 2:
        assert (image - patch) / (len(steps) - 2) > step_fraction * patch
    assert (len(steps) == 1) == (image == patch)


def test_steps_known_example():
    # 100 voxels, patch 32, step <= 16: ceil(68 / 16) + 1 = 6 tiles, 13.6 apart, rounded
    assert compute_steps_for_sliding_window([100], [32], 0.5) == [[0, 14, 27, 41, 54, 68]]


def test_image_equal_to_patch_is_one_tile():
    assert compute_steps_for_sliding_window([32, 48, 16], [32, 48, 16], 0.5) == [[0], [0], [0]]


def test_image_smaller_than_patch_is_refused_until_padded():
    volume = np.arange(10 * 40 * 7, dtype=np.float32).reshape(10, 40, 7)
    patch = (16, 32, 16)
    with pytest.raises(ValueError, match="smaller than patch"):
        compute_steps_for_sliding_window(volume.shape, patch, 0.5)
    plan = plan_sliding_window(volume.shape, patch, 0.5)
    padded, crop = frame_volume(volume, plan)
    assert padded.shape == plan.padded_shape == (16, 40, 16)
    np.testing.assert_array_equal(padded[crop], volume)
    # split evenly, the odd voxel after: the volume sits in the middle of the patch
    assert crop == (slice(3, 13), slice(0, 40), slice(4, 11))
    assert padded.sum() == volume.sum()  # padding is zeros
    assert {z for z, _, _ in plan.tiles} == {0} and {x for _, _, x in plan.tiles} == {0}


def test_frame_without_padding_is_the_input_itself():
    volume = np.zeros((16, 16, 16), dtype=np.float32)
    padded, crop = frame_volume(volume, plan_sliding_window(volume.shape, (8, 16, 16)))
    assert np.shares_memory(padded, volume)  # a view: nothing copied
    assert crop == (slice(0, 16),) * 3


@pytest.mark.parametrize("shape", [(40, 37, 29), (16, 70, 33)])
@pytest.mark.parametrize("step_fraction", [0.5, 0.25])
def test_tile_plan_covers_volume_in_z_major_order(shape, step_fraction):
    patch = (16, 16, 16)
    tiles = plan_sliding_window(shape, patch, step_fraction).tiles
    coverage = np.zeros(shape, dtype=np.int32)
    for z, y, x in tiles:
        assert z + 16 <= shape[0] and y + 16 <= shape[1] and x + 16 <= shape[2]
        coverage[z : z + 16, y : y + 16, x : x + 16] += 1
    assert coverage.min() >= 1
    assert tiles == sorted(tiles)  # z slowest, then y, then x
    assert len(set(tiles)) == len(tiles)


def test_covering_steps_keep_the_grid():
    steps = [0, 14, 27, 41, 54, 68]  # 100 voxels, patch 32
    assert covering_steps(steps, 32, 30, 60) == [27, 41]  # 27 starts before 30, 41 + 32 >= 60
    assert covering_steps(steps, 32, 27, 59) == [27]  # one tile holds the range
    assert covering_steps(steps, 32, 0, 100) == steps
    assert covering_steps(steps, 32, 90, 100) == [68]  # clamped to the last tile
    with pytest.raises(ValueError, match="non-empty"):
        covering_steps(steps, 32, 40, 40)


@pytest.mark.parametrize("patch", [(16, 16, 16), (12, 20, 9)])
def test_gaussian_importance_map_properties(patch):
    weights = gaussian_importance_map(patch)
    assert weights.shape == patch and weights.dtype == np.float32
    assert weights.min() > 0
    assert weights.max() == pytest.approx(10.0)
    center = tuple(p // 2 for p in patch)
    assert weights[center] == weights.max()
    # falls off monotonically from the centre along every axis
    for axis in range(3):
        line = np.moveaxis(weights, axis, 0)[(slice(None), *np.delete(center, axis))]
        assert np.all(np.diff(line[: center[axis] + 1]) >= 0)
        assert np.all(np.diff(line[center[axis] :]) <= 0)
    # symmetric around the centre voxel
    k = min(center[0], patch[0] - 1 - center[0])
    assert weights[center[0] - k, center[1], center[2]] == pytest.approx(
        weights[center[0] + k, center[1], center[2]]
    )
    assert not weights.flags.writeable  # shared cached array


def test_gaussian_map_sigma_controls_spread():
    narrow = gaussian_importance_map((16, 16, 16), sigma_scale=1 / 16)
    wide = gaussian_importance_map((16, 16, 16), sigma_scale=1 / 4)
    assert narrow[0, 8, 8] < wide[0, 8, 8]
    assert narrow.sum() < wide.sum()


def test_tile_window_is_the_patch_at_its_corner() -> None:
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    window = tile_window((1, 2, 3), (2, 3, 2))
    assert window == (slice(1, 3), slice(2, 5), slice(3, 5))
    assert volume[window].shape == (2, 3, 2) and volume[window][0, 0, 0] == volume[1, 2, 3]
