"""``edgepanc run`` end to end with a tiny bundle: geometry, DICOM, outputs, naming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edgepanc.data.cases import Case
from edgepanc.errors import InputError
from edgepanc.io.volume import write_dicom_series
from edgepanc.runtime.scans import discover_scans, mask_name_for

from runtime_support import make_tiny_bundle, phantom, run_cli, write_image

STAGES = {"read", "preprocess", "fine", "postprocess", "restore", "write"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and a.GetSpacing() == b.GetSpacing()
        and a.GetOrigin() == b.GetOrigin()
        and a.GetDirection() == b.GetDirection()
    )


def test_mask_names() -> None:
    assert mask_name_for(Path("test/quiz_037_0000.nii.gz")) == "quiz_037.nii.gz"
    assert mask_name_for(Path("scan.nii.gz")) == "scan.nii.gz"
    assert mask_name_for(Path("scan.nrrd")) == "scan.nii.gz"
    assert mask_name_for(Path("series_folder")) == "series_folder.nii.gz"


def test_discover_scans_skips_reference_masks(tmp_path: Path) -> None:
    small = phantom(shape_zyx=(8, 8, 8))
    for name in ("quiz_1_002_0000.nii.gz", "quiz_1_002.nii.gz", "other.mha"):
        write_image(small, tmp_path / name)
    write_dicom_series(small, tmp_path / "dicom_case")
    (tmp_path / "notes.txt").write_text("ignored")
    found = [p.name for p in discover_scans(tmp_path)]
    assert found == ["other.mha", "quiz_1_002_0000.nii.gz", "dicom_case"]
    assert discover_scans(tmp_path / "dicom_case") == [tmp_path / "dicom_case"]


def test_discover_scans_recurses_into_split_folders(tmp_path: Path) -> None:
    small = phantom(shape_zyx=(8, 8, 8))
    for sub, name in (("subtype0", "quiz_0_001"), ("subtype2", "quiz_2_004")):
        write_image(small, tmp_path / "validation" / sub / f"{name}_0000.nii.gz")
        write_image(small, tmp_path / "validation" / sub / f"{name}.nii.gz")
    found = [p.name for p in discover_scans(tmp_path / "validation")]
    assert found == ["quiz_0_001_0000.nii.gz", "quiz_2_004_0000.nii.gz"]


def test_discover_scans_refuses_two_scans_with_one_mask_name(tmp_path: Path) -> None:
    small = phantom(shape_zyx=(8, 8, 8))
    write_image(small, tmp_path / "a" / "case_0000.nii.gz")
    write_image(small, tmp_path / "b" / "case_0000.nii.gz")
    with pytest.raises(InputError, match="same mask case.nii.gz"):
        discover_scans(tmp_path)


def test_real_ct_masks_keep_the_input_grid(
    real_ct_cases: list[Case], tmp_path: Path, bundle: Path
) -> None:
    out = tmp_path / "out"
    folder = tmp_path / "in"
    folder.mkdir()
    for case in real_ct_cases:  # the run names masks after the image file: give each its own
        shutil.copy(case.image, folder / f"{case.case_id}_0000.nii.gz")
    result = run_cli("run", folder, "--model", bundle, "--out", out, "--preview", "--step", "1.0")
    assert result.exit_code == 0, result.stderr
    rows = (out / "subtype_results.csv").read_text().splitlines()
    assert rows[0] == "Names,Subtype" and len(rows) == 1 + len(real_ct_cases)
    for case in real_ct_cases:
        image = sitk.ReadImage(str(case.image))
        mask = sitk.ReadImage(str(out / f"{case.case_id}.nii.gz"))
        assert _same_grid(mask, image)
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1, 2}
        report = json.loads((out / f"{case.case_id}.json").read_text())
        assert set(report["timings_s"]) >= STAGES
        assert abs(sum(report["probabilities"]) - 1) < 1e-4
        argmax = int(np.argmax(report["probabilities"]))
        # no lesion kept, no subtype claimed; the submission row keeps the head's argmax
        assert report["subtype"] == (argmax if report["lesion_found"] else None)
        assert report["lesion_found"] == (report["lesion_volume_ml"] > 0)
        assert report["submission_subtype"] == argmax
        assert f"{case.case_id}.nii.gz,{argmax}" in rows
        assert report["backend"] == "torch" and report["precision"] == "fp32"
        assert report["tile_count"] > 0 and report["peak_memory_bytes"] > 0
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000
        labels = sitk.GetArrayViewFromImage(mask)
        assert report["pancreas_volume_ml"] == pytest.approx(
            np.count_nonzero(labels) * voxel_ml, abs=1e-3
        )
        assert (out / f"{case.case_id}_preview.png").stat().st_size > 1000
    assert "seconds per case" in result.stdout


def test_dicom_series_gives_the_same_mask_as_nifti(tmp_path: Path, bundle: Path) -> None:
    image = phantom(shape_zyx=(24, 40, 40), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    nifti = write_image(image, tmp_path / "in" / "case.nii.gz")
    dicom = tmp_path / "dicom" / "case_dcm"
    dicom.parent.mkdir()
    write_dicom_series(image, dicom)
    out = tmp_path / "out"
    assert run_cli("run", nifti, "--model", bundle, "--out", out).exit_code == 0
    result = run_cli("run", dicom, "--model", bundle, "--out", out)
    assert result.exit_code == 0, result.stderr
    from_nifti = sitk.ReadImage(str(out / "case.nii.gz"))
    from_dicom = sitk.ReadImage(str(out / "case_dcm.nii.gz"))
    assert np.array_equal(
        sitk.GetArrayViewFromImage(from_nifti), sitk.GetArrayViewFromImage(from_dicom)
    )
    assert from_dicom.GetSize() == image.GetSize()
    assert np.allclose(from_dicom.GetSpacing(), image.GetSpacing(), atol=1e-4)
    assert np.allclose(from_dicom.GetOrigin(), image.GetOrigin(), atol=1e-3)
    # the CSV keeps the first run's row and adds the second's
    rows = (out / "subtype_results.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == ["case.nii.gz", "case_dcm.nii.gz"]


def test_memory_budget_recorded_and_respected_by_plan(tmp_path: Path, bundle: Path) -> None:
    scan = write_image(phantom(shape_zyx=(24, 40, 40)), tmp_path / "in" / "b_0000.nii.gz")
    out = tmp_path / "out"
    result = run_cli(
        "run",
        scan,
        "--model",
        bundle,
        "--out",
        out,
        "--memory-budget",
        "4GB",
        "--tile-batch",
        "auto",
    )
    assert result.exit_code == 0, result.stderr
    plan = json.loads((out / "b.json").read_text())["memory_plan"]
    assert plan["budget"] == 4_000_000_000 and plan["peak"] <= plan["budget"]
    assert plan["tile_batch"] >= 1
