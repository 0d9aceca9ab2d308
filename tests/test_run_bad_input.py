"""Bad input to ``edgepanc run``: one clear line naming the file, non-zero exit, nothing partial."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edgepanc.errors import BudgetError
from edgepanc.runtime.budget import VolumeSizes, plan_tile_batch

from runtime_support import make_tiny_bundle, phantom, run_cli, write_image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _small_good(path: Path) -> Path:
    return write_image(phantom(shape_zyx=(20, 24, 28)), path)


def _missing(folder: Path) -> Path:
    return folder / "absent_0000.nii.gz"


def _not_an_image(folder: Path) -> Path:
    path = folder / "notes_0000.nii.gz"
    path.write_text("this is not a CT scan")
    return path


def _two_d(folder: Path) -> Path:
    return write_image(
        sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), folder / "flat2d_0000.nii.gz"
    )


def _four_d(folder: Path) -> Path:
    img = sitk.GetImageFromArray(np.zeros((2, 8, 8, 8), np.int16), isVector=False)
    return write_image(img, folder / "series4d_0000.nii.gz")


def _nan(folder: Path) -> Path:
    values = sitk.GetArrayFromImage(phantom(shape_zyx=(20, 24, 28))).astype(np.float32)
    values[3, 4, 5] = np.nan
    # MetaImage keeps NaN as written (SimpleITK's NIfTI round trip here turns it into 0)
    return write_image(sitk.GetImageFromArray(values), folder / "nan_0000.mha")


def _zero_axis(folder: Path) -> Path:
    path = write_image(
        sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), folder / "zero_0000.nii"
    )
    header = bytearray(path.read_bytes())
    header[46:48] = struct.pack("<h", 0)  # NIfTI dim[3] = 0
    path.write_bytes(bytes(header))
    return path


def _truncated(folder: Path) -> Path:
    full = _small_good(folder / "full.tmp.nii.gz")
    path = folder / "cut_0000.nii.gz"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    return path


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (_missing, "no such file"),
    "not_an_image": (_not_an_image, ""),
    "2d": (_two_d, "2D"),
    "4d": (_four_d, "4D"),
    "nan": (_nan, "NaN"),
    "zero_axis": (_zero_axis, "length 0"),
    "truncated": (_truncated, "truncated"),
}


def _assert_no_outputs(out: Path, stem: str) -> None:
    leftovers = sorted(p.name for p in out.glob(f"*{stem}*")) if out.exists() else []
    assert leftovers == [], leftovers


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_single_bad_scan(kind: str, tmp_path: Path, bundle: Path) -> None:
    make, word = BAD_INPUTS[kind]
    (tmp_path / "in").mkdir()
    scan = make(tmp_path / "in")
    out = tmp_path / "out"
    result = run_cli("run", scan, "--model", bundle, "--out", out)
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert scan.name in lines[0] and word in lines[0]
    assert not (out / "subtype_results.csv").exists()
    _assert_no_outputs(out, scan.name.split("_0000")[0])


def test_folder_run_finishes_good_cases_and_lists_failures(tmp_path: Path, bundle: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _small_good(folder / "good_0000.nii.gz")
    bad = [_nan(folder), _truncated(folder), _not_an_image(folder)]
    out = tmp_path / "out"
    result = run_cli("run", folder, "--model", bundle, "--out", out)
    assert result.exit_code == 1
    assert (out / "good.nii.gz").is_file() and (out / "good.json").is_file()
    csv_lines = (out / "subtype_results.csv").read_text().splitlines()
    assert csv_lines[0] == "Names,Subtype"
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["good.nii.gz"]
    for scan in bad:
        assert scan.name in result.stdout  # listed among the failures
        _assert_no_outputs(out, scan.name.split("_0000")[0])
    assert "failed" in result.stdout and "3" in result.stdout


def test_mask_passed_as_image_warns_and_continues(
    tmp_path: Path, bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = (sitk.GetArrayFromImage(phantom(shape_zyx=(20, 24, 28))) > 0).astype(np.uint8)
    scan = write_image(sitk.GetImageFromArray(labels), tmp_path / "in" / "mask_0000.nii.gz")
    result = run_cli("run", scan, "--model", bundle, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "out" / "mask.json").read_text())
    assert any("looks like a label" in note and scan.name in note for note in report["notes"])


def test_output_folder_not_writable(tmp_path: Path, bundle: Path) -> None:
    scan = _small_good(tmp_path / "in" / "ok_0000.nii.gz")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_cli("run", scan, "--model", bundle, "--out", blocker)
    assert result.exit_code != 0
    assert "a_file" in result.stderr and "not a folder" in result.stderr


def test_budget_too_small_refused_up_front(tmp_path: Path, bundle: Path) -> None:
    scan = _small_good(tmp_path / "in" / "ok_0000.nii.gz")
    out = tmp_path / "out"
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--memory-budget", "10MB")
    assert result.exit_code != 0
    assert "ok_0000.nii.gz" in result.stderr and "at least" in result.stderr
    _assert_no_outputs(out, "ok")


def test_existing_mask_needs_overwrite(tmp_path: Path, bundle: Path) -> None:
    scan = _small_good(tmp_path / "in" / "ok_0000.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ok.nii.gz").write_bytes(b"keep me")
    result = run_cli("run", scan, "--model", bundle, "--out", out)
    assert result.exit_code != 0 and "ok.nii.gz" in result.stderr and "--overwrite" in result.stderr
    assert (out / "ok.nii.gz").read_bytes() == b"keep me"
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert sitk.ReadImage(str(out / "ok.nii.gz")).GetSize() == (28, 24, 20)


def test_without_model_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEPANC_HOME", str(tmp_path / "empty_home"))
    scan = _small_good(tmp_path / "in" / "ok_0000.nii.gz")
    result = run_cli("run", scan, "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert "edgepanc train" in result.stderr


def test_planner_refuses_with_minimum_and_grows_batch_with_budget() -> None:
    sizes = VolumeSizes.from_shapes((512, 512, 300), 2, (300, 400, 400))
    args = dict(
        baseline=400_000_000,
        sizes=sizes,
        slab_bytes=100_000_000,
        patch_size=(64, 96, 96),
        activation_per_voxel=300.0,
        requested_tile_batch=None,
    )
    with pytest.raises(
        BudgetError,
        match=r"scan\.nii\.gz: memory budget 0\.50 GB is too small; .*at least (\d+\.\d+) GB",
    ) as info:
        plan_tile_batch(500_000_000, source="scan.nii.gz", **args)
    minimum = float(info.value.args[0].split("at least ")[1].split(" GB")[0]) * 1e9
    at_minimum = plan_tile_batch(int(minimum), **args)  # the printed minimum is enough
    assert at_minimum.tile_batch == 1 and at_minimum.estimate.peak <= minimum
    with pytest.raises(BudgetError):
        plan_tile_batch(int(minimum) - 20_000_000, **args)
    roomy = plan_tile_batch(8_000_000_000, **args)
    assert roomy.tile_batch > 1 and roomy.estimate.peak <= 8_000_000_000
    assert plan_tile_batch(None, **{**args, "requested_tile_batch": 3}).tile_batch == 3


def test_the_plan_counts_what_each_pass_holds() -> None:
    from edgepanc.runtime.budget import estimate_memory

    def estimate(**fields):
        sizes = VolumeSizes.from_shapes((512, 512, 300), 2, (80, 120, 240), **fields)
        return estimate_memory(200_000_000, sizes, 10_000_000, (32, 64, 64), 150.0, 1)

    whole = estimate()
    kept = estimate(kept_input_voxels=300 * 200 * 250)  # the part of the scan the mask can reach
    image, crop = 512 * 512 * 300 * 2, 300 * 200 * 250 * 2
    # the whole scan is read and resampled from; only the kept part waits for the measures
    assert kept.preprocess == whole.preprocess
    assert whole.infer_data - kept.infer_data == image - crop
    assert whole.restore - kept.restore == image - crop
    coarse = estimate(map_bytes=2)  # labels only: no probability maps to restore from
    assert whole.infer_data - coarse.infer_data == 80 * 120 * 240 * 4
