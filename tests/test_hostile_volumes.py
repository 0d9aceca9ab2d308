"""Hostile volumes: files that would run on silently or exhaust memory are refused up front."""

from __future__ import annotations

import gzip
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, tiny_pair, write
from nifti_support import NiftiHeader, header_for, write_nifti

from edgepanc.errors import BudgetError, EdgepancError, InputError
from edgepanc.io.volume import (
    DIRECTION_TOLERANCE,
    MAX_AXIS_LENGTH,
    inspect_image,
    read_image,
    write_dicom_series,
)

from runtime_support import make_tiny_bundle, phantom, run_cli, write_image

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _error(path: Path, match: str, **kwargs: object) -> EdgepancError:
    with pytest.raises(EdgepancError, match=match) as info:
        read_image(path, **kwargs)  # type: ignore[arg-type]
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    return info.value


# --- non-finite voxels ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nifti_non_finite_voxels_refused(
    tmp_path: Path, suffix: str, bad: float, dtype: type
) -> None:
    values = np.zeros((3, 4, 5), dtype)
    values[1, 2, 3] = bad
    path = write(make_image(values), tmp_path / f"ct{suffix}")
    assert isinstance(_error(path, "1 NaN or infinite"), InputError)


def test_nifti_float_finite_voxels_read(tmp_path: Path) -> None:
    values = np.linspace(-1000, 1000, 60, dtype=np.float32).reshape(3, 4, 5)
    img = read_image(write(make_image(values), tmp_path / "ct.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), values)


# --- spacing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf"), -2.0])
@pytest.mark.parametrize("axis", [1, 3])
def test_nifti_invalid_spacing_without_codes_refused(tmp_path: Path, bad: float, axis: int) -> None:
    values = np.zeros((3, 4, 5), np.int16)
    pixdim = [1.0, 0.8, 0.8, 2.5, 0.0, 0.0, 0.0, 0.0]
    pixdim[axis] = bad
    path = write_nifti(tmp_path / "ct.nii.gz", header_for(values, pixdim=pixdim), values)
    _error(path, "spacing")


def test_zero_spacing_scan_gives_one_line_and_no_mask(tmp_path: Path, bundle: Path) -> None:
    values = sitk.GetArrayFromImage(phantom(shape_zyx=(20, 24, 28)))
    scan = write_nifti(
        tmp_path / "in" / "flat_0000.nii.gz",
        header_for(values, pixdim=(1.0, 2.0, 2.0, 0.0, 0, 0, 0, 0)),
        values,
    )
    out = tmp_path / "out"
    result = run_cli("run", scan, "--model", bundle, "--out", out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "spacing" in lines[0]
    assert not list(out.glob("flat*")) if out.exists() else True


# --- DICOM series with a gap ------------------------------------------------------------------


def _series(tmp_path: Path, depth: int = 8) -> list[Path]:
    values = np.random.default_rng(0).integers(-1000, 500, (depth, 6, 7)).astype(np.int16)
    image = make_image(values, spacing=(0.7, 0.8, 2.5), origin=(1.0, 2.0, 3.0))
    return write_dicom_series(image, tmp_path / "series")


def test_dicom_series_with_missing_slice_refused(tmp_path: Path) -> None:
    files = _series(tmp_path)
    files[4].unlink()
    _error(tmp_path / "series", "missing slice|not evenly spaced")


def test_dicom_series_with_duplicate_position_refused(tmp_path: Path) -> None:
    files = _series(tmp_path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[3]))
    slice_img = reader.Execute()
    for key in reader.GetMetaDataKeys():
        slice_img.SetMetaData(key, reader.GetMetaData(key))
    # A second file at slice 3's position (its ImagePositionPatient is kept), with its own UID.
    slice_img.SetMetaData("0008|0018", reader.GetMetaData("0008|0018") + ".9")
    slice_img.SetMetaData("0020|0013", "99")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "series" / "slice_dup.dcm"))
    writer.Execute(slice_img)
    _error(tmp_path / "series", "same position|not evenly spaced")


def test_dicom_series_evenly_spaced_still_reads(tmp_path: Path) -> None:
    _series(tmp_path)
    img = read_image(tmp_path / "series")
    assert img.GetSize() == (7, 6, 8)
    np.testing.assert_allclose(img.GetSpacing(), (0.7, 0.8, 2.5), rtol=1e-6)


# --- memory bombs -------------------------------------------------------------------------------


def _gzip_bomb(path: Path) -> Path:
    """90 bytes of gzip claiming 512 x 512 x 8192 int16, with a trailer that matches."""
    header = NiftiHeader(dim=(3, 512, 512, 8192, 1, 1, 1, 1), datatype=4)
    data = header.pack()
    blob = gzip.compress(data)
    declared = 352 + 512 * 512 * 8192 * 2
    assert struct.unpack("<I", blob[-4:])[0] == declared % 2**32  # the size check is fooled
    path.write_bytes(blob)
    return path


def _mha_bomb(path: Path) -> Path:
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 512 512 8192\nElementType = MET_SHORT\n"
        "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n"
    )
    with path.open("ab") as fh:
        fh.write(b"\0" * 64)
    return path


# A child process under an address-space limit: a reader that allocates the declared volume
# before refusing dies there, one that checks the header first prints the refusal.
_CHILD = textwrap.dedent(
    """
    import resource, sys
    from edgepanc.errors import EdgepancError
    from edgepanc.io.volume import read_image
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    budget = int(sys.argv[3]) if sys.argv[3] != "none" else None
    try:
        read_image(sys.argv[1], max_bytes=budget)
    except EdgepancError as exc:
        print("REFUSED", exc)
    """
)


@pytest.mark.parametrize("make", [_gzip_bomb, _mha_bomb], ids=["nifti_gz", "mha"])
@pytest.mark.parametrize("budget", ["1000000000", "none"])
def test_memory_bomb_refused_before_allocating(tmp_path: Path, make, budget: str) -> None:
    bomb = make(tmp_path / ("bomb.nii.gz" if make is _gzip_bomb else "bomb.mha"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    limit = str(3 * 2**30)  # the volume needs 4 GiB; the interpreter and libraries far less
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(bomb), limit, budget],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith("REFUSED"), child.stdout + child.stderr[-2000:]
    assert "bomb" in child.stdout
    word = "memory budget" if budget != "none" else str(MAX_AXIS_LENGTH)
    assert word in child.stdout


def test_budget_counts_the_float32_working_copy(tmp_path: Path) -> None:
    values = np.zeros((100, 100, 100), np.int16)  # 2 MB stored, 6 MB with its float32 copy
    path = write_nifti(tmp_path / "ct.nii.gz", header_for(values), values)
    error = _error(path, "memory budget", max_bytes=5_000_000)
    assert isinstance(error, BudgetError)
    assert read_image(path, max_bytes=7_000_000).GetSize() == (100, 100, 100)


def test_memory_bomb_gives_one_line_under_budget(tmp_path: Path, bundle: Path) -> None:
    (tmp_path / "in").mkdir()
    bomb = _gzip_bomb(tmp_path / "in" / "bomb_0000.nii.gz")
    out = tmp_path / "out"
    result = run_cli("run", bomb, "--model", bundle, "--out", out, "--memory-budget", "1GB")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bomb_0000.nii.gz" in lines[0] and "memory budget" in lines[0]


# --- direction cosines ------------------------------------------------------------------------


def _skewed(tmp_path: Path, off: float, qform_code: int = 0) -> tuple[Path, np.ndarray]:
    values = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    srow = ((0.8, off, 0.0, 10.0), (0.0, 0.8, 0.0, -20.0), (0.0, 0.0, 2.5, 30.0))
    header = header_for(
        values,
        pixdim=(1.0, 0.8, 0.8, 2.5, 0, 0, 0, 0),
        sform_code=1,
        qform_code=qform_code,
        srow=srow,
    )
    return write_nifti(tmp_path / "skew.nii.gz", header, values), values


def test_nearly_orthonormal_direction_is_orthonormalised_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, values = _skewed(tmp_path, off=2e-4)
    with caplog.at_level(logging.WARNING):
        img = read_image(path)
    assert any("orthonormal" in r.getMessage() and "skew" in r.getMessage() for r in caplog.records)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    # RAS srow -> LPS: the first two axes flip sign; the polar factor stays this close to it.
    np.testing.assert_allclose(direction, np.diag([-1.0, -1.0, 1.0]), atol=DIRECTION_TOLERANCE)
    np.testing.assert_allclose(img.GetSpacing(), (0.8, 0.8, 2.5), rtol=1e-4)
    np.testing.assert_allclose(img.GetOrigin(), (-10.0, 20.0, 30.0), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), values)
    assert inspect_image(path).size == (5, 4, 3)


def test_direction_far_from_orthonormal_refused_naming_the_problem(tmp_path: Path) -> None:
    path, _ = _skewed(tmp_path, off=0.2)
    error = _error(path, "not orthonormal")
    assert "unknown format" not in str(error)


# --- not a regular file -------------------------------------------------------------------------


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError("the reader blocked on a FIFO")


def test_fifo_and_device_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        for path in (fifo, Path("/dev/null")):
            with pytest.raises(InputError, match="not a regular file"):
                read_image(path)
            with pytest.raises(InputError, match="not a regular file"):
                inspect_image(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_header_values_beyond_sane_limits_refused(tmp_path: Path) -> None:
    base = dict(pixdim=(1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0))
    cases = {
        "datatype": NiftiHeader(datatype=1234, bitpix=16, **base),
        "vox_offset": NiftiHeader(vox_offset=-100.0, **base),
        "negative": NiftiHeader(dim=(3, 4, -5, 6, 1, 1, 1, 1), **base),
    }
    for name, header in cases.items():
        path = write_nifti(tmp_path / f"{name}.nii", header, np.zeros((6, 5, 4), np.int16))
        with pytest.raises(InputError):
            read_image(path)


def test_real_geometry_still_reads(tmp_path: Path) -> None:
    image, _ = tiny_pair(spacing=(0.7, 0.8, 2.5), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    path = write_image(image, tmp_path / "ok.nii.gz")
    back = read_image(path, max_bytes=10**9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


# --- found by tests/test_fuzz_volume.py ---------------------------------------------------------

_READ_IN_CHILD = textwrap.dedent(
    """
    import sys
    from edgepanc.errors import EdgepancError
    from edgepanc.io.volume import read_image
    try:
        read_image(sys.argv[1])
    except EdgepancError as exc:
        print("REFUSED", exc)
    """
)


def test_sform_with_infinity_refused_without_hanging(tmp_path: Path) -> None:
    # ITK's NIfTI reader loops forever on this sform, so it runs in a child with a deadline.
    values = np.zeros((2, 6, 5), np.int16)
    srow = (
        (164735.5, 1e-30, 1e30, 513810.1),
        (0.0, 420777.75, 1e-30, 1.0),
        (-0.33, np.inf, 0.8, 0),
    )
    path = write_nifti(tmp_path / "inf.nii.gz", header_for(values, sform_code=2, srow=srow), values)
    child = subprocess.run(
        [sys.executable, "-c", _READ_IN_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout.startswith("REFUSED") and "sform" in child.stdout, child.stderr[-2000:]
    assert "ITK" not in child.stderr and "vnl" not in child.stderr


@pytest.mark.parametrize(
    "fields",
    [
        {"qform_code": 1, "quatern": (float("nan"), 0.0, 0.0)},
        {"qform_code": 1, "qoffset": (0.0, float("inf"), 0.0)},
        {"sform_code": 1, "srow": ((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 0))},
        {"scl_slope": float("nan")},
    ],
    ids=["nan_quaternion", "inf_qoffset", "degenerate_sform", "nan_slope"],
)
def test_non_finite_or_degenerate_nifti_geometry_refused(tmp_path: Path, fields: dict) -> None:
    values = np.zeros((3, 4, 5), np.int16)
    path = write_nifti(tmp_path / "geo.nii.gz", header_for(values, **fields), values)
    _error(path, "invalid NIfTI|degenerate")


def _mha(path: Path, matrix: str, spacing: str = "0.8 0.8 2.5") -> Path:
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 5 4 3\nElementType = MET_SHORT\n"
        f"ElementSpacing = {spacing}\nTransformMatrix = {matrix}\nOffset = 1 2 3\n"
        "ElementDataFile = LOCAL\n"
    )
    with path.open("ab") as fh:
        fh.write(np.arange(60, dtype=np.int16).tobytes())
    return path


def test_mha_direction_orthonormalised_or_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    near = _mha(tmp_path / "near.mha", "1 0.0002 0 0 1 0 0 0 1")
    with caplog.at_level(logging.WARNING):
        img = read_image(near)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    assert any("orthonormal" in r.getMessage() for r in caplog.records)
    _error(_mha(tmp_path / "far.mha", "1 0.3 0 0 1 0 0 0 1"), "not orthonormal")
    _error(_mha(tmp_path / "flat.mha", "1 0 0 1 0 0 0 0 1"), "not orthonormal")


def test_extent_beyond_any_patient_refused(tmp_path: Path) -> None:
    _error(_mha(tmp_path / "huge.mha", "1 0 0 0 1 0 0 0 1", spacing="0.8 0.8 4000"), "mm")


# --- headers that point at other files ------------------------------------------------------------


def _detached(folder: Path, name: str, target: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.raw").write_bytes(np.zeros(60, np.int16).tobytes())
    if name.endswith(".nhdr"):
        text = (
            "NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nspacings: 1 1 1\n"
            f"encoding: raw\nendian: little\ndata file: {target}\n"
        )
    else:
        text = (
            "ObjectType = Image\nNDims = 3\nDimSize = 5 4 3\nElementType = MET_SHORT\n"
            f"ElementSpacing = 1 1 1\nElementDataFile = {target}\n"
        )
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["scan.mhd", "scan.mha", "scan.nhdr"])
def test_header_pointing_outside_its_folder_refused(tmp_path: Path, name: str) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(np.arange(60, dtype=np.int16).tobytes())
    for target in (str(secret), "../secret.raw"):
        path = _detached(tmp_path / "in", name, target)
        _error(path, "outside")
        with pytest.raises(InputError, match="outside"):
            inspect_image(path)
    inside = _detached(tmp_path / "in", name, "data.raw")  # beside the header: fine
    assert read_image(inside).GetSize() == (5, 4, 3)


def test_itk_native_messages_stay_off_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = _mha(tmp_path / "cut.mha", "1 0 0 0 1 0 0 0 1")
    path.write_bytes(path.read_bytes()[:-20])  # MetaImage prints "data not read completely"
    capfd.readouterr()
    _error(path, "cannot be read")
    native = capfd.readouterr()
    assert native.out == "" and native.err == "", native
