"""edgepanc.preprocessing: orientation, resampling, normalisation, the plan and its inverse."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, tiny_pair, write

from edgepanc.data.cases import Case, discover_cases
from edgepanc.errors import DatasetError
from edgepanc.io.volume import read_image, read_label
from edgepanc.preprocessing import (
    Geometry,
    GridRecord,
    PreprocessingPlan,
    canonical_array_in_original_order,
    canonical_geometry,
    canonical_spacing,
    ct_intensity_statistics,
    from_canonical,
    normalize_ct,
    orientation_of,
    plan_from_cases,
    preprocess_image,
    preprocess_label,
    resample_to_spacing,
    restore_label,
    to_canonical,
)

# Real-CT target spacing (z, y, x): coarser than ts_dataset_s0009 in z, finer than ts_example_ct
# everywhere, so both down- and up-sampling are exercised while the test stays fast.
REAL_CT_SPACING = (2.0, 1.5, 1.5)
PERMUTED = (0, 0, 1, 1, 0, 0, 0, -1, 0)  # axes swapped and flipped: "PIL"-like storage
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


def plan(spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> PreprocessingPlan:
    return PreprocessingPlan(spacing, -100.0, 300.0, 60.0, 50.0, (32, 32, 32))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_plan_round_trips_through_json() -> None:
    original = plan((2.5, 0.8, 0.8))
    restored = PreprocessingPlan.from_dict(json.loads(json.dumps(original.to_dict())))
    assert restored == original and isinstance(restored.patch_size, tuple)
    with pytest.raises(ValueError, match="missing keys \\['std'\\]"):
        PreprocessingPlan.from_dict({k: v for k, v in original.to_dict().items() if k != "std"})
    with pytest.raises(ValueError, match="target_spacing"):
        PreprocessingPlan((0.0, 1.0, 1.0), 0, 1, 0, 1, (8, 8, 8))


@pytest.mark.parametrize("direction", [RAS, PERMUTED])
def test_canonical_orientation_is_exactly_invertible(direction: tuple[int, ...]) -> None:
    values = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = make_image(values, spacing=(0.7, 0.8, 2.5), origin=(3.0, -4.0, 5.0), direction=direction)
    canonical = to_canonical(img)
    assert canonical.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    # The same physical point holds the same value in both frames.
    point = img.TransformIndexToPhysicalPoint((1, 2, 3))
    assert canonical[canonical.TransformPhysicalPointToIndex(point)] == img[1, 2, 3]
    assert canonical_spacing(img.GetSpacing(), direction) == canonical.GetSpacing()[::-1]
    back = from_canonical(canonical, orientation_of(direction))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), values)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-9)


def _axis_directions() -> list[tuple[float, ...]]:
    """Every permutation and flip of the axes, plus an oblique one."""
    directions = []
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            for column, (row, sign) in enumerate(zip(perm, flips, strict=True)):
                matrix[row, column] = sign
            directions.append(tuple(matrix.ravel()))
    angle = 0.05
    tilt = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    directions.append(tuple((tilt @ np.asarray(directions[5]).reshape(3, 3)).ravel()))
    return directions


def test_canonical_array_in_original_order_equals_reorienting_back() -> None:
    values = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    for direction in _axis_directions():
        img = make_image(values, spacing=(0.7, 0.8, 2.5), direction=direction)
        canonical = sitk.GetArrayFromImage(to_canonical(img))
        view = canonical_array_in_original_order(canonical, direction)
        np.testing.assert_array_equal(view, values, err_msg=f"direction {direction}")
        assert np.shares_memory(view, canonical)  # a view: no copy is made


def test_canonical_geometry_from_the_header_equals_reorienting() -> None:
    for direction in _axis_directions():
        img = sitk.Image([5, 6, 7], sitk.sitkUInt8)
        img.SetSpacing([0.7, 0.9, 2.5])
        img.SetOrigin([10.0, -20.0, 30.0])
        img.SetDirection(direction)
        expected = to_canonical(img)
        size, spacing, origin, new_direction = canonical_geometry(
            img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()
        )
        assert size == expected.GetSize(), direction
        np.testing.assert_allclose(spacing, expected.GetSpacing())
        np.testing.assert_allclose(origin, expected.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(new_direction, expected.GetDirection(), atol=1e-12)


@pytest.mark.parametrize("direction", [RAS, PERMUTED])
def test_preprocessing_resamples_straight_into_the_canonical_frame(direction) -> None:
    """Same network input as reorienting first (the copy the direct resampling avoids)."""
    values = np.random.default_rng(0).normal(40, 80, size=(12, 30, 26)).astype(np.int16)
    img = make_image(values, spacing=(0.7, 0.8, 2.5), origin=(3.0, -4.0, 5.0), direction=direction)
    plan = PreprocessingPlan((3.0, 1.5, 1.5), -200.0, 300.0, 50.0, 100.0, (8, 8, 8))
    volume, grid = preprocess_image(img, plan)
    reoriented = resample_to_spacing(to_canonical(img), plan.target_spacing, is_label=False)
    np.testing.assert_allclose(
        volume, normalize_ct(sitk.GetArrayFromImage(reoriented), plan), atol=1e-5
    )
    assert grid.resampled.matches(Geometry.of(reoriented))


def test_resampling_keeps_the_field_of_view() -> None:
    _, mask = tiny_pair(spacing=(1.0, 1.0, 3.0), origin=(10.0, 20.0, 30.0))
    out = resample_to_spacing(mask, (1.0, 0.5, 0.5), is_label=True)
    assert out.GetSize() == (12, 12, 12) and out.GetPixelID() == sitk.sitkUInt8
    corner = np.array(mask.GetOrigin()) - np.array(mask.GetSpacing()) / 2
    np.testing.assert_allclose(np.array(out.GetOrigin()) - np.array(out.GetSpacing()) / 2, corner)
    assert set(np.unique(sitk.GetArrayFromImage(out))) == {0, 1, 2}  # no interpolated labels
    same = resample_to_spacing(mask, (3.0, 1.0, 1.0), is_label=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(same), sitk.GetArrayFromImage(mask))


def test_image_resampling_is_linear_float() -> None:
    ramp = np.tile(np.arange(6, dtype=np.int16) * 10, (4, 6, 1))  # rises along x
    out = resample_to_spacing(make_image(ramp, spacing=(2.0, 1.0, 1.0)), (1.0, 1.0, 1.0), False)
    assert out.GetPixelID() == sitk.sitkFloat32
    row = sitk.GetArrayFromImage(out)[1, 2]
    assert np.all(np.diff(row) >= 0) and row.min() >= 0 and row.max() <= 50


def test_normalize_ct_clips_and_standardises_without_mutating() -> None:
    values = np.array([-1000, -100, 60, 300, 2000], np.int16)
    out = normalize_ct(values, plan())
    assert out.dtype == np.float32 and values[0] == -1000
    np.testing.assert_allclose(out, (np.clip(values, -100, 300) - 60) / 50)


def test_intensity_statistics_ignore_rare_extremes() -> None:
    tissue = np.random.default_rng(0).uniform(0, 100, 10_000)
    stats = ct_intensity_statistics(np.concatenate([tissue, [3000.0, -1024.0]]))
    assert -1 < stats.clip_low < 1 and 99 < stats.clip_high < 101
    assert abs(stats.mean - 50) < 1 and abs(stats.std - 100 / np.sqrt(12)) < 1


def _case_with_spacing(root: Path, name: str, z_spacing: float, split: str = "train") -> Case:
    image, mask = tiny_pair(spacing=(0.8, 0.8, z_spacing), direction=RAS)
    return Case(
        name,
        write(image, root / f"{name}_0000.nii.gz"),
        write(mask, root / f"{name}.nii.gz"),
        0,
        split,
    )


def test_plan_from_cases_uses_median_spacing_and_foreground(tmp_path: Path) -> None:
    cases = [_case_with_spacing(tmp_path, f"c{i}", z) for i, z in enumerate((2.0, 5.0, 3.0))]
    # A validation case with odd spacing must not move the median.
    cases.append(_case_with_spacing(tmp_path, "v", 9.0, split="validation"))
    fitted = plan_from_cases(cases, patch_size=(16, 32, 32))
    assert fitted.target_spacing == pytest.approx((3.0, 0.8, 0.8))
    # Foreground voxels are soft tissue (30..150 HU); the -1000 HU background must not count.
    assert 30 <= fitted.clip_low < fitted.mean < fitted.clip_high <= 150
    assert plan_from_cases(cases, (16, 32, 32), target_spacing=(1, 1, 1)).target_spacing == (
        1,
        1,
        1,
    )
    assert plan_from_cases(cases, (16, 32, 32)) == fitted  # seeded: same data, same plan


def test_plan_from_cases_needs_training_cases(quiz_dataset: Path) -> None:
    tests_only = [c for c in discover_cases(quiz_dataset) if c.split == "test"]
    with pytest.raises(DatasetError, match="no labelled training cases"):
        plan_from_cases(tests_only, (16, 16, 16))


@pytest.mark.parametrize("direction", [RAS, PERMUTED])
def test_label_forward_and_back_is_exact_on_a_finer_grid(direction: tuple[int, ...]) -> None:
    image, mask = tiny_pair(spacing=(0.8, 0.8, 2.0), origin=(5.0, -7.0, 9.0), direction=direction)
    # 0.4 mm divides every axis's spacing in both storage orders: pure whole-factor upsampling.
    data, grid = preprocess_image(image, plan((0.4, 0.4, 0.4)))
    assert data.dtype == np.float32 and data.shape == grid.resampled.shape
    # Upsampling by whole factors and back with nearest neighbour loses nothing.
    restored = restore_label(preprocess_label(mask, grid), grid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), sitk.GetArrayFromImage(mask))
    assert restored.GetSize() == image.GetSize() and restored.GetSpacing() == image.GetSpacing()
    assert restored.GetOrigin() == image.GetOrigin()
    assert restored.GetDirection() == image.GetDirection()


def gland_with_lesion(direction: tuple[int, ...]) -> tuple[sitk.Image, GridRecord, np.ndarray]:
    """A blank image stored in ``direction``, its grid at 3 x 1.5 x 1.5 mm and a label map there
    with a gland and a lesion inside it."""
    image = make_image(
        np.zeros((14, 40, 36), dtype=np.int16),
        spacing=(0.7, 0.8, 2.5),
        origin=(3.0, -4.0, 5.0),
        direction=direction,
    )
    _, grid = preprocess_image(image, plan((3.0, 1.5, 1.5)))
    label = np.zeros(grid.resampled.shape, dtype=np.uint8)
    label[3:7, 4:9, 4:10] = 1
    label[4:6, 5:8, 5:8] = 2
    return image, grid, label


@pytest.mark.parametrize("direction", [RAS, PERMUTED])
def test_restoring_only_the_labelled_box_equals_restoring_the_whole_grid(direction) -> None:
    _, grid, label = gland_with_lesion(direction)
    label[-2, -2, 1] = 1  # a lone voxel elsewhere stretches the box
    restored = sitk.GetArrayFromImage(restore_label(label, grid))
    # reference: every nested region resampled over the whole canonical grid, then reoriented
    target = grid.canonical
    whole = np.zeros(target.shape, dtype=np.uint8)
    for value in (1, 2):
        region = grid.resampled.stamp(
            sitk.GetImageFromArray(np.where(label >= value, 255, 0).astype(np.uint8))
        )
        resampled = sitk.Resample(
            region, list(target.size), sitk.Transform(), sitk.sitkLinear,
            list(target.origin), list(target.spacing), list(target.direction), 0.0, sitk.sitkUInt8,
        )  # fmt: skip
        whole[sitk.GetArrayFromImage(resampled) >= 128] = value
    reference = from_canonical(
        target.stamp(sitk.GetImageFromArray(whole)), orientation_of(direction)
    )
    assert (restored > 0).sum() > 100 and (restored == 2).sum() > 10
    np.testing.assert_array_equal(restored, sitk.GetArrayFromImage(reference))


def test_grid_record_round_trips_through_json() -> None:
    image, _ = tiny_pair(direction=PERMUTED)
    _, grid = preprocess_image(image, plan((2.0, 2.0, 2.0)))
    assert GridRecord.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid


def test_mismatched_inputs_are_refused() -> None:
    image, mask = tiny_pair()
    _, grid = preprocess_image(image, plan())
    with pytest.raises(ValueError, match="does not match the image grid"):
        preprocess_label(tiny_pair(spacing=(2.0, 1.0, 1.0))[1], grid)
    with pytest.raises(ValueError, match="preprocessed shape"):
        restore_label(np.zeros((1, 2, 3), np.uint8), grid)


def test_real_ct_label_survives_the_round_trip(real_ct_cases: list[Case]) -> None:
    fitted = plan_from_cases(real_ct_cases, (64, 64, 64), target_spacing=REAL_CT_SPACING)
    assert -200 < fitted.mean < 250  # pancreas soft tissue in HU
    for case in real_ct_cases:
        image, label = read_image(case.image), read_label(case.label)
        data, grid = preprocess_image(image, fitted)
        assert grid.canonical.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert np.isfinite(data).all() and abs(float(data[label_mask(label, grid)].mean())) < 3
        restored = restore_label(preprocess_label(label, grid), grid)
        assert restored.GetSize() == image.GetSize()
        assert restored.GetSpacing() == image.GetSpacing()
        assert restored.GetOrigin() == image.GetOrigin()
        assert restored.GetDirection() == image.GetDirection()
        score = dice(sitk.GetArrayFromImage(restored) > 0, sitk.GetArrayFromImage(label) > 0)
        print(f"{case.case_id}: round-trip Dice {score:.4f}")
        assert score >= 0.95, f"{case.case_id}: Dice {score:.4f}"


def label_mask(label: sitk.Image, grid: GridRecord) -> np.ndarray:
    return preprocess_label(label, grid) > 0


@pytest.mark.parametrize("direction", [RAS, PERMUTED])
def test_hard_probabilities_of_a_box_restore_exactly_as_the_labels(direction) -> None:
    # 0/255 maps of the labels' own regions, given for a box only, must give the labels' result:
    # the box's grid sits at the right place and nothing outside it is lost.
    from edgepanc.inferers.probabilities import RegionProbabilities

    image, grid, label = gland_with_lesion(direction)
    box = (slice(2, 8), slice(3, 11), slice(2, 12))
    maps = np.stack([np.where(label[box] >= v, 255, 0) for v in (1, 2)]).astype(np.uint8)
    soft = restore_label(label, grid, RegionProbabilities(maps, box))
    hard = restore_label(label, grid)
    assert (sitk.GetArrayFromImage(hard) == 2).sum() > 10
    np.testing.assert_array_equal(sitk.GetArrayFromImage(soft), sitk.GetArrayFromImage(hard))
    assert soft.GetOrigin() == image.GetOrigin() and soft.GetSpacing() == image.GetSpacing()


def test_restoring_probabilities_puts_the_boundary_where_they_cross_one_half() -> None:
    # A region along x whose last coarse voxel has probability 0.75: the hard labels restore to
    # the midpoint between that voxel and the next, the probabilities to where they cross 0.5,
    # a third of the way there.
    from edgepanc.inferers.probabilities import RegionProbabilities

    image = make_image(np.zeros((4, 4, 40), dtype=np.int16), spacing=(0.5, 2.0, 2.0))
    _, grid = preprocess_image(image, plan((2.0, 2.0, 2.0)))
    shape = grid.resampled.shape
    assert shape == (4, 4, 10) and grid.resampled.origin[0] == 0.75  # coarse centres 0.75 + 2k
    label = np.zeros(shape, dtype=np.uint8)
    label[..., :5] = 1  # coarse voxels 0..4 (up to 8.75 mm) inside, 5 (10.75 mm) outside
    p = np.zeros(shape)
    p[..., :4] = 1.0
    p[..., 4] = 0.75  # falls linearly to 0 at 10.75 mm: crosses 0.5 at 9.42 mm
    maps = np.stack([np.rint(255 * p), np.zeros(shape)]).astype(np.uint8)
    full = tuple(slice(0, s) for s in shape)
    hard = sitk.GetArrayFromImage(restore_label(label, grid))[0, 0]
    soft = sitk.GetArrayFromImage(restore_label(label, grid, RegionProbabilities(maps, full)))[0, 0]
    # fine voxel centres at 0, 0.5, ..., 19.5 mm
    assert np.flatnonzero(hard).max() * 0.5 == 9.5  # the 0/255 map crosses one half at 9.75 mm
    assert np.flatnonzero(soft).max() * 0.5 == 9.0  # the probability at 9.42 mm
    assert hard[0] == soft[0] == 1


@pytest.mark.parametrize("direction", [PERMUTED, RAS, (1, 0, 0, 0, 1, 0, 0, 0, 1)])
def test_a_canonical_box_lands_where_the_whole_array_puts_it(direction) -> None:
    from edgepanc.preprocessing.orientation import box_in_original_order

    canonical = np.arange(6 * 7 * 8).reshape(6, 7, 8)
    box = (slice(1, 4), slice(2, 7), slice(0, 3))
    whole = canonical_array_in_original_order(canonical, direction)
    part = canonical_array_in_original_order(canonical[box], direction)
    placed = box_in_original_order(box, canonical.shape, direction)
    np.testing.assert_array_equal(whole[placed], part)


@pytest.mark.parametrize("direction", [RAS, PERMUTED])
def test_the_restored_box_holds_every_restored_voxel_and_measures_alike(direction) -> None:
    from edgepanc.preprocessing import restored_box
    from edgepanc.runtime.measures import measure_labels

    image, grid, label = gland_with_lesion(direction)
    restored = restore_label(label, grid)
    box = restored_box(label, grid)
    mask = sitk.GetArrayFromImage(restored)
    outside = mask.copy()
    outside[box] = 0
    assert mask[box].any() and not outside.any()
    assert measure_labels(restored, image, box) == measure_labels(restored, image)
    assert restored_box(np.zeros_like(label), grid) is None


@pytest.mark.parametrize("direction", [RAS, PERMUTED])
def test_restoring_a_slab_at_a_time_gives_the_whole_window_result(direction, monkeypatch) -> None:
    from edgepanc.preprocessing import pipeline

    _, grid, label = gland_with_lesion(direction)
    whole = sitk.GetArrayFromImage(restore_label(label, grid))
    monkeypatch.setattr(pipeline, "RESTORE_SLAB_VOXELS", 1)  # one input-grid plane at a time
    sliced = sitk.GetArrayFromImage(restore_label(label, grid))
    assert (whole == 2).any()
    np.testing.assert_array_equal(sliced, whole)
