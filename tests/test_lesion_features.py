"""Features of the predicted lesion: known shapes give known sizes, moments and CT numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from edgepanc.postprocessing.lesion_features import FEATURE_NAMES, lesion_features

BACKGROUND_HU, PANCREAS_HU, LESION_HU = -100.0, 100.0, 30.0


def named(vector: np.ndarray) -> dict[str, float]:
    assert vector.shape == (len(FEATURE_NAMES),) and vector.dtype == np.float64
    assert np.all(np.isfinite(vector))
    return dict(zip(FEATURE_NAMES, vector.tolist(), strict=True))


def scene(shape: tuple[int, int, int], lesion: np.ndarray, gland: tuple[slice, ...]):
    """Labels with a gland box (1) and ``lesion`` (2); HU constant per label."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[gland] = 1
    labels[lesion] = 2
    image = np.full(shape, BACKGROUND_HU)
    image[labels == 1] = PANCREAS_HU
    image[labels == 2] = LESION_HU
    return image, labels


def ellipsoid(shape, spacing, centre_mm, semi_axes_mm) -> np.ndarray:
    grids = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    return (
        sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre_mm, semi_axes_mm, strict=True)) <= 1
    )


def test_an_ellipsoid_lesion_has_its_volume_diameter_axes_and_ct_numbers():
    shape, spacing = (24, 48, 40), (2.0, 1.0, 1.0)
    semi = (8.0, 14.0, 10.0)  # z minor, y major, x middle
    lesion = ellipsoid(shape, spacing, (24.0, 24.0, 20.0), semi)
    image, labels = scene(shape, lesion, (slice(2, 22), slice(4, 44), slice(4, 36)))
    f = named(lesion_features(image, labels, spacing))
    volume_ml = 4 / 3 * math.pi * np.prod(semi) / 1000
    assert f["has_lesion"] == 1.0 and f["lesion_count"] == 1.0
    assert f["lesion_ml"] == pytest.approx(volume_ml, rel=0.03)
    assert f["total_lesion_ml"] == f["lesion_ml"] == pytest.approx(lesion.sum() * 0.002)
    assert f["equivalent_diameter_mm"] == pytest.approx(2 * np.prod(semi) ** (1 / 3), rel=0.02)
    assert 2 * 14.0 - 2.0 <= f["longest_extent_mm"] <= 2 * 14.0
    voxel_width = 2.0 ** (1 / 3)
    compactness = f["equivalent_diameter_mm"] / (f["longest_extent_mm"] + voxel_width)
    assert f["compactness"] == pytest.approx(compactness) and 0.6 < compactness < 0.85
    assert f["elongation"] == pytest.approx(10 / 14, abs=0.03)
    assert f["flatness"] == pytest.approx(8 / 14, abs=0.03)
    assert 0 < f["surface_ratio"] < 1
    # Constant CT numbers per label make every attenuation statistic exact.
    for key in ("hu_mean", "hu_p10", "hu_p50", "hu_p90", "border_hu_mean"):
        assert f[key] == LESION_HU, key
    assert f["hu_std"] == 0.0 and f["interior_minus_border_hu"] == 0.0
    assert f["rim_hu_mean"] == PANCREAS_HU and f["pancreas_hu_mean"] == PANCREAS_HU
    assert f["rim_minus_lesion_hu"] == PANCREAS_HU - LESION_HU
    assert f["lesion_minus_pancreas_hu"] == LESION_HU - PANCREAS_HU
    assert f["lesion_share"] == pytest.approx(lesion.sum() / np.count_nonzero(labels))
    assert f["gland_ml"] == pytest.approx(np.count_nonzero(labels) * 0.002)


@pytest.mark.parametrize(
    ("size", "spacing"),
    [((3, 7, 10), (2.0, 1.0, 1.0)), ((5, 20, 30), (1.5, 1.0, 1.0)), ((1, 30, 30), (3.0, 0.8, 0.8))],
    ids=["all-pairs", "convex-hull", "one-slice"],
)
def test_a_box_lesion_has_exact_extent_border_and_principal_axes(size, spacing):
    """A box of sides L has second moments L**2 / 12 per axis, so its axis ratios are the side
    ratios; its Feret diameter joins opposite corner voxel centres."""
    shape = tuple(k + 8 for k in size)
    lesion = np.zeros(shape, dtype=bool)
    lesion[tuple(slice(4, 4 + k) for k in size)] = True
    image, labels = scene(shape, lesion, (slice(0, None),) * 3)
    f = named(lesion_features(image, labels, spacing))
    sides = sorted((k * s for k, s in zip(size, spacing, strict=True)), reverse=True)
    assert f["elongation"] == pytest.approx(sides[1] / sides[0], rel=1e-9)
    assert f["flatness"] == pytest.approx(sides[2] / sides[0], rel=1e-9)
    corner = [(k - 1) * s for k, s in zip(size, spacing, strict=True)]
    assert f["longest_extent_mm"] == pytest.approx(math.hypot(*corner), rel=1e-12)
    voxels = math.prod(size)
    border = voxels - math.prod(max(k - 2, 0) for k in size)
    assert f["surface_ratio"] == pytest.approx(border / voxels, rel=1e-12)


def test_the_largest_of_several_lesions_is_described_and_all_are_counted():
    shape = (12, 30, 30)
    lesion = np.zeros(shape, dtype=bool)
    lesion[2:5, 2:5, 2:5] = True  # 27 voxels
    lesion[6:10, 15:25, 15:25] = True  # 400 voxels: the largest
    lesion[10, 2, 28] = True  # a speck
    image, labels = scene(shape, lesion, (slice(0, None),) * 3)
    image[6:10, 15:25, 15:25] = 55.0
    f = named(lesion_features(image, labels, (1.0, 1.0, 1.0)))
    assert f["lesion_count"] == 3.0
    assert f["lesion_ml"] == pytest.approx(0.4) and f["total_lesion_ml"] == pytest.approx(0.428)
    assert f["hu_mean"] == 55.0  # the small ones are at LESION_HU: not mixed in


def test_the_rim_stays_in_the_gland_where_it_touches_it_and_takes_the_shell_where_not():
    shape = (12, 20, 20)
    lesion = np.zeros(shape, dtype=bool)
    lesion[4:8, 6:12, 6:12] = True
    # Gland only on one side: the shell meets fat elsewhere, which the rim leaves out.
    image, labels = scene(shape, lesion, (slice(0, None), slice(0, None), slice(0, 9)))
    assert named(lesion_features(image, labels, (1.0, 1.0, 1.0)))["rim_hu_mean"] == PANCREAS_HU
    image, labels = scene(shape, lesion, (slice(0, 0),) * 3)  # no gland voxel at all
    f = named(lesion_features(image, labels, (1.0, 1.0, 1.0)))
    assert f["rim_hu_mean"] == BACKGROUND_HU
    assert f["pancreas_hu_mean"] == 0.0 and f["lesion_minus_pancreas_hu"] == 0.0
    assert f["lesion_share"] == 1.0


def test_the_gradient_texture_of_a_linear_ramp_is_its_slope_and_a_bright_wall_shows():
    shape, spacing = (10, 16, 16), (2.0, 1.0, 0.5)
    lesion = np.zeros(shape, dtype=bool)
    lesion[3:7, 4:12, 4:12] = True
    image, labels = scene(shape, lesion, (slice(0, None),) * 3)
    ramp = 3.0 * np.arange(shape[2]) * spacing[2]  # 3 HU per mm along x
    f = named(lesion_features(np.broadcast_to(ramp, shape).copy(), labels, spacing))
    assert f["gradient_hu_per_mm"] == pytest.approx(3.0, rel=1e-12)
    walled = image.copy()
    walled[lesion] = 150.0
    walled[4:6, 5:11, 5:11] = 10.0  # the interior of the box, one voxel in from its faces
    f = named(lesion_features(walled, labels, spacing))
    assert f["border_hu_mean"] == 150.0
    assert f["interior_minus_border_hu"] == -140.0


def test_without_a_lesion_the_vector_is_defined_and_keeps_the_gland():
    shape = (8, 10, 10)
    image, labels = scene(shape, np.zeros(shape, dtype=bool), (slice(2, 6),) * 3)
    f = named(lesion_features(image, labels, (2.0, 1.0, 1.0)))
    assert f["gland_ml"] == pytest.approx(64 * 0.002) and f["pancreas_hu_mean"] == PANCREAS_HU
    assert all(v == 0.0 for k, v in f.items() if k not in ("gland_ml", "pancreas_hu_mean"))
    empty = lesion_features(image, np.zeros(shape, np.uint8), (2.0, 1.0, 1.0))
    assert np.array_equal(empty, np.zeros(len(FEATURE_NAMES)))


def test_inputs_of_different_shapes_or_bad_spacing_are_refused():
    with pytest.raises(ValueError, match="one 3D shape"):
        lesion_features(np.zeros((4, 4, 4)), np.zeros((4, 4, 5), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        lesion_features(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), np.uint8), (1.0, 0.0, 1.0))


def test_the_vector_does_not_depend_on_how_much_empty_scan_surrounds_the_labels():
    """Work is limited to the labels' reach: padding the scan changes nothing, the rim and the
    gradient at the edge of that reach included."""
    shape, spacing = (10, 16, 16), (2.0, 1.0, 0.5)
    lesion = np.zeros(shape, dtype=bool)
    lesion[3:7, 4:12, 4:12] = True
    image, labels = scene(shape, lesion, (slice(0, 0),) * 3)  # no gland: the rim is the shell
    image += np.random.default_rng(0).normal(0.0, 20.0, size=shape)
    padding = ((9, 4), (0, 7), (12, 3))
    padded_image = np.pad(image, padding, constant_values=BACKGROUND_HU)
    padded_labels = np.pad(labels, padding)
    f = lesion_features(image, labels, spacing)
    np.testing.assert_array_equal(lesion_features(padded_image, padded_labels, spacing), f)
    # The same figures from whole-volume operations: the reach cut off nothing they need.
    face = ndimage.generate_binary_structure(3, 1)
    shell = ndimage.binary_dilation(lesion, face, iterations=2) & ~lesion
    gradient = np.sqrt(sum(g**2 for g in np.gradient(image, *spacing)))
    assert named(f)["rim_hu_mean"] == pytest.approx(image[shell].mean(), rel=1e-12)
    assert named(f)["gradient_hu_per_mm"] == pytest.approx(gradient[lesion].mean(), rel=1e-12)
