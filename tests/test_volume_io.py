"""edgepanc.io.volume: reading, validating and writing volumes and label maps."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, tiny_pair, write

from edgepanc.errors import InputError
from edgepanc.io.volume import (
    inspect_image,
    looks_like_label,
    read_image,
    read_label,
    write_dicom_series,
    write_label,
)

GEOMETRY = {
    "spacing": (0.7, 0.8, 2.5),
    "origin": (12.5, -30.0, 101.0),
    "direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
}


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def expect_input_error(path: Path, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        read_image(path)
    assert info.value.path == path
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_read_image_keeps_voxels_type_and_geometry(tmp_path: Path, suffix: str) -> None:
    image, _ = tiny_pair(**GEOMETRY)
    path = write(image, tmp_path / f"ct{suffix}")
    back = read_image(path)
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert_same_geometry(back, image)


def test_missing_file(tmp_path: Path) -> None:
    expect_input_error(tmp_path / "nope.nii.gz", "no such file")


@pytest.mark.parametrize("name", ["junk.nii.gz", "junk.nii", "junk.mha"])
def test_not_an_image(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an image at all" * 20)
    expect_input_error(path, "not|cannot|corrupt")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    full = write(
        make_image(rng.integers(-1000, 1000, (20, 30, 30)).astype(np.int16)),
        tmp_path / f"full{suffix}",
    )
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    # SimpleITK itself would zero-fill the missing voxels silently.
    expect_input_error(cut, "truncated")


def test_zero_length_axis(tmp_path: Path) -> None:
    path = write(make_image(np.zeros((3, 4, 5), np.int16)), tmp_path / "flat.nii")
    header = bytearray(path.read_bytes())
    header[46:48] = struct.pack("<h", 0)  # dim[3] = 0; SimpleITK would read it as 1
    path.write_bytes(header)
    expect_input_error(path, "length 0")


@pytest.mark.parametrize(("shape", "word"), [((5, 6), "2D"), ((2, 3, 4, 5), "4D")])
def test_wrong_dimension(tmp_path: Path, shape: tuple[int, ...], word: str) -> None:
    img = sitk.GetImageFromArray(np.zeros(shape, np.float32), isVector=False)
    expect_input_error(write(img, tmp_path / "bad.nii.gz"), word)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path: Path, bad: float) -> None:
    values = np.zeros((3, 4, 5), np.float32)
    values[1, 2, 3] = bad
    expect_input_error(write(make_image(values), tmp_path / "ct.nrrd"), "NaN or infinite")


def test_vector_image_rejected(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    expect_input_error(write(img, tmp_path / "rgb.mha"), "values per voxel")


def test_folder_without_dicom_series(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no DICOM here")
    expect_input_error(tmp_path, "no DICOM series")


def test_dicom_series_round_trip(tmp_path: Path) -> None:
    image, _ = tiny_pair(**GEOMETRY)
    files = write_dicom_series(image, tmp_path / "series")
    assert len(files) == image.GetDepth()
    back = read_image(tmp_path / "series")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert_same_geometry(back, image)


def test_inspect_image_reads_header_only(tmp_path: Path) -> None:
    image, _ = tiny_pair(**GEOMETRY)
    info = inspect_image(write(image, tmp_path / "ct.nii.gz"))
    assert info.size == image.GetSize() and info.dimension == 3
    np.testing.assert_allclose(info.spacing, GEOMETRY["spacing"], rtol=1e-6)


def test_read_label_integer(tmp_path: Path) -> None:
    _, mask = tiny_pair()
    path = write(sitk.Cast(mask, sitk.sitkInt32), tmp_path / "mask.nii.gz")
    label = read_label(path)
    assert label.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(mask))


def test_read_label_rounds_near_integer_floats_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, mask = tiny_pair()
    values = sitk.GetArrayFromImage(mask).astype(np.float32) * np.float32(1.0000153)
    path = write(make_image(values), tmp_path / "mask.nii.gz")
    with caplog.at_level(logging.WARNING):
        label = read_label(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(mask))
    assert any(str(path) in r.getMessage() and "rounded" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("value", "shown"), [(1.4, "1.4"), (3.0, "3"), (-1.0, "-1")])
def test_read_label_rejects_bad_values(tmp_path: Path, value: float, shown: str) -> None:
    values = np.zeros((3, 4, 5), np.float32)
    values[1, 1, 1] = value
    path = write(make_image(values), tmp_path / "mask.nii.gz")
    with pytest.raises(InputError, match=shown) as info:
        read_label(path)
    assert str(path) in str(info.value)


def test_write_label_copies_reference_geometry(tmp_path: Path) -> None:
    image, mask = tiny_pair(**GEOMETRY)
    out = tmp_path / "pred.nii.gz"
    write_label(sitk.GetArrayFromImage(mask), out, reference=image)
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(mask))
    assert_same_geometry(back, image)  # NIfTI stores geometry as float32: equal to that precision
    assert [p.name for p in tmp_path.iterdir()] == ["pred.nii.gz"]  # no temporary left over


def test_write_label_failure_leaves_nothing(tmp_path: Path) -> None:
    image, _ = tiny_pair()
    with pytest.raises(ValueError, match="does not match"):
        write_label(np.zeros((2, 2, 2), np.uint8), tmp_path / "pred.nii.gz", reference=image)
    with pytest.raises(InputError, match="outside"):
        write_label(np.full((2, 2, 2), 7, np.uint8), tmp_path / "pred.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_looks_like_label() -> None:
    image, mask = tiny_pair()
    assert looks_like_label(mask)
    assert looks_like_label(make_image(sitk.GetArrayFromImage(mask) * np.float32(1.0000153)))
    assert not looks_like_label(image)
    assert not looks_like_label(make_image(np.full((2, 2, 2), 0.5, np.float32)))
