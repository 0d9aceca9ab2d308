"""The case measures on the input grid: mean HU exact, and bounded in memory for any mask."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk

from edgepanc.runtime.measures import MEAN_HU_SLAB_VOXELS, lesion_diameter_mm, mean_hu


def test_mean_hu_is_exact_when_summed_a_slab_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1000, size=(23, 17, 19)).astype(np.int16)
    labels = rng.integers(0, 3, size=ct.shape).astype(np.uint8)
    labels[:3] = 0  # the box starts past the first slices
    monkeypatch.setattr("edgepanc.runtime.measures.MEAN_HU_SLAB_VOXELS", 17 * 19 * 2 + 5)
    pancreas, lesion = mean_hu(sitk.GetImageFromArray(ct), sitk.GetImageFromArray(labels))
    assert pancreas == round(float(ct[labels > 0].mean()), 1)
    assert lesion == round(float(ct[labels == 2].mean()), 1)


def test_mean_hu_of_a_mask_covering_the_whole_scan_stays_within_a_few_slabs() -> None:
    # A model that does not fit the scan can label all of it: the sums must not make full-size
    # float64 copies (two of them took 1.2 GB on a 512 x 512 x 294 scan, past a 1.5 GB budget).
    shape = (160, 256, 256)  # 10.5 M voxels: 168 MB for two full-size 8-byte copies
    ct = sitk.GetImageFromArray(np.full(shape, 40, dtype=np.int16))
    labels = sitk.GetImageFromArray(np.ones(shape, dtype=np.uint8))
    tracemalloc.start()
    try:
        pancreas, lesion = mean_hu(ct, labels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (pancreas, lesion) == (40.0, None)
    assert peak < 3 * 8 * MEAN_HU_SLAB_VOXELS
    assert peak < 2 * 8 * np.prod(shape) / 2


def test_the_lesion_diameter_is_that_of_the_largest_lesion_not_the_span_of_all() -> None:
    labels = np.zeros((10, 40, 40), dtype=np.uint8)
    labels[4:6, 5:15, 10] = 2  # the lesion: 10 voxels along y (9 mm between centres)
    labels[5, 35, 35] = 2  # a speck far away: together they would span about 30 mm
    image = sitk.GetImageFromArray(labels)
    assert lesion_diameter_mm(image) == pytest.approx(np.hypot(9.0, 1.0))
    assert lesion_diameter_mm(sitk.GetImageFromArray(np.zeros_like(labels))) is None


def test_the_lesion_diameter_is_measured_in_mm_on_an_oblique_anisotropic_grid() -> None:
    labels = np.zeros((12, 50, 60), dtype=np.uint8)
    labels[3:9, 20:30, 30:50] = 1
    labels[5:7, 22:26, 33:45] = 2  # 2 x 4 x 12 voxels, far from the origin corner
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((100.0, -40.0, 12.0))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, -1, 0))
    # the corners of the lesion's voxel centres: 11 x 0.7, 3 x 0.8 and 1 x 2.5 mm apart
    assert lesion_diameter_mm(image) == pytest.approx(np.sqrt(7.7**2 + 2.4**2 + 2.5**2))
