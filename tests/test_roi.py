"""Coarse-to-fine ROI geometry and the auto switch."""

from __future__ import annotations

import numpy as np
import pytest

from edgepanc.inferers.tiling import bounding_box
from edgepanc.runtime.roi import (
    RoiConfig,
    box_to_list,
    expand_box,
    scale_box,
    should_use_roi,
)


def test_auto_switch_by_patch_count() -> None:
    patch = (16, 16, 16)
    config = RoiConfig(mode="auto", auto_min_patches=8)
    assert not should_use_roi((32, 32, 32), patch, config)  # exactly 8 patches
    assert should_use_roi((32, 32, 48), patch, config)  # 12 patches
    assert should_use_roi((8, 8, 8), patch, RoiConfig(mode="on"))
    assert not should_use_roi((512, 512, 512), patch, RoiConfig(mode="off"))
    with pytest.raises(ValueError, match="roi mode"):
        should_use_roi((8, 8, 8), patch, RoiConfig(mode="sometimes"))


def test_bounding_box() -> None:
    mask = np.zeros((10, 12, 14), dtype=bool)
    assert bounding_box(mask) is None
    mask[2:5, 3, 7:10] = True
    assert box_to_list(bounding_box(mask)) == [[2, 5], [3, 4], [7, 10]]


def test_scale_box_rounds_outward() -> None:
    box = (slice(1, 3), slice(0, 5), slice(2, 4))
    full = scale_box(box, (5, 5, 5), (11, 10, 10))
    assert box_to_list(full) == [[2, 7], [0, 10], [4, 8]]


def test_expand_box_adds_the_margin_in_mm_and_clips() -> None:
    shape = (100, 100, 100)
    box = (slice(40, 50), slice(0, 10), slice(95, 100))
    grown = expand_box(box, shape, spacing_zyx=(2.0, 1.0, 1.0), margin_mm=10.0)
    # 10 mm is 5 voxels at 2 mm, 10 at 1 mm; never beyond the volume
    assert box_to_list(grown) == [[35, 55], [0, 20], [85, 100]]
    assert expand_box(box, shape, (1.0, 1.0, 1.0), margin_mm=0.0) == box


def _run(tmp_path, scan, mode: str):
    import SimpleITK as sitk

    from edgepanc.runtime.pipeline import RunConfig, run_case
    from edgepanc.thermal import ThermalGuard

    from runtime_support import threshold_model

    out = tmp_path / mode
    out.mkdir()
    report = run_case(
        scan, threshold_model(), RunConfig(out_dir=out, roi=RoiConfig(mode=mode)), ThermalGuard([])
    )
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / report.name)))
    return report, mask


def test_roi_tiles_fewer_and_gives_the_same_mask(tmp_path) -> None:
    from runtime_support import phantom, write_image

    scan = write_image(
        phantom(shape_zyx=(60, 160, 160), spacing_xyz=(2.0, 2.0, 2.0)),
        tmp_path / "wide_0000.nii.gz",
    )
    fine_only, full_mask = _run(tmp_path, scan, "off")
    roi, roi_mask = _run(tmp_path, scan, "on")
    assert roi.roi["used"] and roi.roi["coarse_tiles"] > 0
    assert roi.roi["fraction"] < 0.5
    assert roi.tile_count < fine_only.tile_count
    assert np.count_nonzero(full_mask == 1) > 0 and np.count_nonzero(full_mask == 2) > 0
    assert np.array_equal(roi_mask, full_mask)
    assert roi.subtype == fine_only.subtype == 1
    assert abs(roi.lesion_volume_ml - fine_only.lesion_volume_ml) < 1e-9


def test_roi_falls_back_to_full_tiling_when_nothing_found(tmp_path) -> None:
    import SimpleITK as sitk

    from runtime_support import write_image

    air = sitk.GetImageFromArray(np.full((40, 60, 60), -1000, np.int16))
    air.SetSpacing((2.0, 2.0, 2.0))
    scan = write_image(air, tmp_path / "air_0000.nii.gz")
    report, mask = _run(tmp_path, scan, "on")
    assert not report.roi["used"] and "whole volume" in report.roi["fallback"]
    assert any("whole volume" in note for note in report.notes)
    assert not mask.any()


def test_the_coarse_grid_is_a_whole_number_of_patches_where_a_factor_up_to_the_cap_allows() -> None:
    from edgepanc.runtime.roi import coarse_factors

    config = RoiConfig()  # factor 2, up to 2.5
    # 264 -> 128 = 4 patches of 32 (2.06); 302 -> 128 = 2 of 64 (2.36)
    factors = coarse_factors((264, 302, 302), (32, 64, 64), config)
    assert factors == pytest.approx((264 / 128, 302 / 128, 302 / 128))
    # 218 at 2 is 109: one patch would need 3.4, past the cap, so 2 stays (two tiles overlap);
    # 39 at 2 is under one patch: nothing to fit, 2 stays
    assert coarse_factors((39, 139, 218), (32, 64, 64), config) == pytest.approx(
        (2.0, 139 / 64, 2.0)
    )
    assert coarse_factors((264, 302, 302), (32, 64, 64), RoiConfig(max_factor=2.0)) == (2, 2, 2)
