"""NetworkInput: the runtime's network inputs, resampled only where the network looks, agree
with resampling the whole scan (preprocess_image) and take memory only for what they hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edgepanc.preprocessing import PreprocessingPlan, preprocess_image, resample_for_network
from edgepanc.preprocessing.network_input import NetworkInput

PERMUTED = (0, 0, 1, 1, 0, 0, 0, -1, 0)  # axes swapped and flipped: "PIL"-like storage


def scan(size=(40, 36, 30), spacing=(0.8, 0.9, 2.5), direction=PERMUTED) -> sitk.Image:
    rng = np.random.default_rng(0)
    values = rng.integers(-1000, 400, size=tuple(reversed(size))).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.0, 30.0, 7.5))
    image.SetDirection(direction)
    return image


def plan(spacing=(2.0, 1.2, 1.2)) -> PreprocessingPlan:
    return PreprocessingPlan(spacing, -133.0, 165.0, 92.9, 38.3, (8, 16, 16))


@pytest.mark.parametrize("spacing", [(2.0, 1.2, 1.2), None])  # resampled, or reordered only
def test_fine_box_holds_the_whole_grid_values_and_zeros_elsewhere(spacing) -> None:
    image = scan()
    # None: the plan's spacing is the scan's own, canonical order (z, y, x)
    the_plan = plan(spacing or (0.8, 2.5, 0.9))
    whole, grid = preprocess_image(image, the_plan)
    source = NetworkInput(image, the_plan)
    assert source.shape == whole.shape and source.grid == grid
    z, y, x = whole.shape
    box = (slice(1, z - 1), slice(2, y // 2 + 2), slice(3, x))
    volume = source.fine(box)
    assert volume.shape == whole.shape and volume.dtype == np.float32
    np.testing.assert_allclose(volume[box], whole[box], atol=1e-5)
    outside = np.ones(whole.shape, dtype=bool)
    outside[box] = False
    assert not volume[outside].any()
    np.testing.assert_allclose(source.fine(), whole, atol=1e-5)


def test_coarse_is_the_scan_at_twice_the_spacing() -> None:
    image = scan()
    source = NetworkInput(image, plan())
    coarse = source.coarse((2, 2, 2))
    expected, _ = preprocess_image(image, plan(source.coarse_spacing((2, 2, 2))))
    assert coarse.shape == source.coarse_shape((2, 2, 2)) == expected.shape
    np.testing.assert_allclose(coarse, expected, atol=1e-5)
    # about half the network grid per axis
    assert all(abs(c - n / 2) <= 1 for c, n in zip(coarse.shape, source.shape, strict=True))


def test_hu_planes_are_the_whole_grid_planes_in_hu() -> None:
    image = scan()
    resampled, _ = resample_for_network(image, plan())
    hu = sitk.GetArrayFromImage(resampled)
    source = NetworkInput(image, plan())
    centre = (5, 7, 11)
    axial, coronal, sagittal = source.hu_planes(centre)
    np.testing.assert_allclose(axial, hu[5], atol=1e-3)
    np.testing.assert_allclose(coronal, hu[:, 7], atol=1e-3)
    np.testing.assert_allclose(sagittal, hu[:, :, 11], atol=1e-3)


def resident_bytes_of(array: np.ndarray) -> int:
    """Resident bytes of the memory mappings that hold ``array``'s data (Linux smaps): a large
    array has mappings of its own (numpy's huge-page advice may split one in two), so this is
    what its written pages take, whatever else the process and the test session hold."""
    start = array.__array_interface__["data"][0]
    end = start + array.nbytes
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            low, high = (int(part, 16) for part in fields[0].split("-"))
            inside = low < end and start < high
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def test_a_small_box_of_a_large_grid_takes_memory_for_the_box_only() -> None:
    # 8 mm voxels up to 1 mm: a 600 MB float32 grid, of which the box is 16 MB in 40 slices
    image = scan(size=(64, 64, 72), spacing=(8.0, 8.0, 8.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    source = NetworkInput(image, plan((1.0, 1.0, 1.0)))
    grid_bytes = 4 * int(np.prod(source.shape))
    assert grid_bytes > 500e6
    box = (slice(200, 240), slice(100, 300), slice(0, 512))
    volume = source.fine(box)
    assert volume.shape == source.shape
    assert volume[220, 200].any() and not volume[100].any()
    held = resident_bytes_of(volume)
    box_bytes = 4 * 40 * 200 * 512
    # at most the box's slices in full (2 MB huge pages span whole 1 MB slices), never the grid
    slices_bytes = 4 * (40 + 4) * 512 * 512
    assert box_bytes <= held <= slices_bytes, f"{held / 1e6:.0f} MB held, box {box_bytes / 1e6:.0f}"
    assert held < grid_bytes / 10


def test_after_release_the_kept_part_measures_the_mask_alike() -> None:
    from edgepanc.preprocessing import restore_label, restored_box
    from edgepanc.runtime.measures import measure_labels

    image = scan()
    source = NetworkInput(image, plan())
    box = (slice(2, 9), slice(4, 14), slice(3, 15))
    labels = np.zeros(source.shape, dtype=np.uint8)
    labels[3:8, 5:13, 4:14] = 1
    labels[4:6, 7:10, 6:9] = 2
    restored = restore_label(labels, source.grid)
    within = restored_box(labels, source.grid)
    whole = measure_labels(restored, image, within)
    source.release_outside(box)
    kept = source.image_box
    assert source.image.GetSize() == tuple(sl.stop - sl.start for sl in reversed(kept))
    assert source.image.GetNumberOfPixels() < image.GetNumberOfPixels()
    assert measure_labels(restored, source.image, within, kept) == whole
    assert whole.lesion_found and whole.pancreas_mean_hu is not None
    with pytest.raises(RuntimeError, match="released"):
        source.hu_planes((3, 5, 7))


def test_after_release_the_preview_planes_keep_the_kept_part_and_take_context_from_coarse() -> None:
    image = scan()
    resampled, _ = resample_for_network(image, plan())
    hu = sitk.GetArrayFromImage(resampled)
    source = NetworkInput(image, plan())
    source.coarse((2, 2, 2))
    box = (slice(3, 8), slice(5, 13), slice(6, 16))
    source.release_outside(box)
    axial, coronal, sagittal = source.hu_planes((5, 9, 10))
    assert not any(np.isnan(p).any() for p in (axial, coronal, sagittal))
    assert axial.shape == hu[5].shape and sagittal.shape == hu[:, :, 10].shape
    # inside the box the planes are the whole-grid resample's; outside they are the coarse one's
    np.testing.assert_allclose(axial[5:13, 6:16], hu[5, 5:13, 6:16], atol=1e-3)
    np.testing.assert_allclose(coronal[3:8, 6:16], hu[3:8, 9, 6:16], atol=1e-3)
    assert not np.allclose(axial[0], hu[5, 0], atol=1e-3)  # random voxels: coarse differs
    assert abs(float(axial.mean()) - float(hu[5].mean())) < 0.2 * float(hu[5].std())
