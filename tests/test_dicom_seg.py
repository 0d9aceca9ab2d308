"""DICOM SEG output: read back with highdicom, on the source series' geometry, labels named, and
voxel for voxel the NIfTI mask."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from edgepanc.io.volume import write_dicom_series
from edgepanc.runtime.outputs import plan_outputs
from edgepanc.runtime.pipeline import RunConfig, run_cases
from edgepanc.runtime.roi import RoiConfig
from edgepanc.thermal import ThermalGuard

from runtime_support import make_tiny_bundle, phantom, run_cli, threshold_model, write_image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _series(folder: Path, name: str = "ct_series") -> Path:
    # an axis-aligned series stored with x and y flipped against LPS (right-handed, as DICOM needs)
    image = phantom(shape_zyx=(24, 32, 40), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    folder.mkdir(parents=True, exist_ok=True)
    write_dicom_series(image, folder / name)
    return folder / name


def _sources(series: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(series.iterdir())]


def _check_seg_against_nifti(seg_path: Path, series: Path, mask_path: Path) -> np.ndarray:
    """Every check of the SEG against its series and the NIfTI mask; returns the SEG's labels."""
    seg = hd.seg.segread(seg_path)
    sources = _sources(series)
    assert seg.Modality == "SEG" and seg.Manufacturer == "edgepanc"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["pancreas", "lesion"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "15776009"
    # the frames land on the source series' geometry
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose(
        [float(v) for v in orientation], [float(v) for v in sources[0].ImageOrientationPatient]
    )
    spacing = shared.PixelMeasuresSequence[0].PixelSpacing
    assert np.allclose([float(v) for v in spacing], [float(v) for v in sources[0].PixelSpacing])
    positions = {tuple(round(float(v), 3) for v in s.ImagePositionPatient) for s in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert tuple(round(float(v), 3) for v in position) in positions
    assert (seg.Rows, seg.Columns) == (sources[0].Rows, sources[0].Columns)
    # the mask, per source slice, equals the NIfTI mask voxel for voxel
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources], combine_segments=True
    )
    mask = sitk.ReadImage(str(mask_path))
    view = sitk.GetArrayViewFromImage(mask)
    for source, frame in zip(sources, labels, strict=True):
        index = mask.TransformPhysicalPointToIndex([float(v) for v in source.ImagePositionPatient])
        assert index[:2] == (0, 0)
        np.testing.assert_array_equal(frame, view[index[2]])
    return labels


def test_seg_reads_back_on_the_series_geometry_and_equals_the_nifti(tmp_path: Path) -> None:
    series = _series(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    config = RunConfig(out_dir=out, roi=RoiConfig(mode="off"), nifti=True, dicom_seg=True)
    plan = plan_outputs([series], out, None, kinds=config.kinds)
    outcome = run_cases(plan, threshold_model(), config, ThermalGuard([]))
    assert not outcome.failures, outcome.failures
    record = json.loads((out / "ct_series.json").read_text())
    assert record["seg"] == str(out / "ct_series.seg.dcm") and record["seg_sha256"]
    labels = _check_seg_against_nifti(out / "ct_series.seg.dcm", series, out / "ct_series.nii.gz")
    assert {1, 2} <= set(np.unique(labels))  # pancreas and lesion both there: a real comparison


def test_run_writes_both_for_a_dicom_series_by_default(tmp_path: Path, bundle: Path) -> None:
    series = _series(tmp_path / "in")
    out = tmp_path / "out"
    result = run_cli("run", series, "--model", bundle, "--out", out, "--no-preview")
    assert result.exit_code == 0, result.stderr
    assert (out / "ct_series.nii.gz").is_file() and (out / "ct_series.seg.dcm").is_file()
    _check_seg_against_nifti(out / "ct_series.seg.dcm", series, out / "ct_series.nii.gz")
    again = run_cli("run", series, "--model", bundle, "--out", out, "--no-preview")
    assert again.exit_code == 0 and "skipped           1" in again.stdout


def test_dicom_seg_only(tmp_path: Path, bundle: Path) -> None:
    series = _series(tmp_path / "in")
    out = tmp_path / "out"
    args = ("run", series, "--model", bundle, "--out", out, "--no-preview")
    result = run_cli(*args, "--output-type", "dicom-seg")
    assert result.exit_code == 0, result.stderr
    assert (out / "ct_series.seg.dcm").is_file() and not (out / "ct_series.nii.gz").exists()
    record = json.loads((out / "ct_series.json").read_text())
    assert record["mask"] is None and record["status"] == "finished"
    assert [s.SegmentLabel for s in hd.seg.segread(out / "ct_series.seg.dcm").SegmentSequence] == [
        "pancreas",
        "lesion",
    ]
    again = run_cli(*args, "--output-type", "dicom-seg")
    assert again.exit_code == 0 and "skipped           1" in again.stdout
    # asking for the NIfTI too computes the case again, replacing its own SEG
    both = run_cli(*args, "--output-type", "both")
    assert both.exit_code == 0 and (out / "ct_series.nii.gz").is_file(), both.stderr


def test_dicom_seg_for_a_nifti_input_is_refused_before_anything_is_written(
    tmp_path: Path, bundle: Path
) -> None:
    scan = write_image(phantom(shape_zyx=(20, 24, 28)), tmp_path / "ct_0000.nii.gz")
    out = tmp_path / "out"
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--output-type", "both")
    assert result.exit_code == 2 and "needs DICOM series inputs" in result.stderr
    assert not out.exists()


def test_a_seg_the_user_put_there_is_not_replaced(tmp_path: Path, bundle: Path) -> None:
    series = _series(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ct_series.seg.dcm").write_bytes(b"someone else's segmentation")
    result = run_cli("run", series, "--model", bundle, "--out", out, "--no-preview")
    assert result.exit_code == 2 and "ct_series.seg.dcm" in result.stderr
    assert (out / "ct_series.seg.dcm").read_bytes() == b"someone else's segmentation"
