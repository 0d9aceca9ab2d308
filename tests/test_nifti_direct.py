"""NIfTI read straight into ITK's buffer: the same image ITK's reader gives, held once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
from nifti_support import header_for, write_nifti

from edgepanc.io.nifti import read_nifti_header
from edgepanc.io.nifti_direct import read_nifti_direct
from edgepanc.io.volume import read_image

OBLIQUE_SROW = ((0.0, -0.9, 0.0, 30.0), (0.7, 0.0, 0.0, -12.0), (0.0, 0.0, 2.5, 80.0))


def itk_information(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def assert_same_image(ours: sitk.Image, itk: sitk.Image) -> None:
    assert ours.GetPixelID() == itk.GetPixelID()
    assert ours.GetSize() == itk.GetSize()
    assert ours.GetSpacing() == itk.GetSpacing()
    assert ours.GetOrigin() == itk.GetOrigin()
    assert ours.GetDirection() == itk.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(itk))


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16, np.int32, np.float32])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_the_direct_read_is_the_image_itk_reads(tmp_path, dtype, suffix, endian) -> None:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((7, 9, 11)) * 100).astype(dtype)
    header = header_for(values, sform_code=1, srow=OBLIQUE_SROW, endian=endian)
    path = write_nifti(tmp_path / f"scan{suffix}", header, values)
    direct = read_nifti_direct(path, read_nifti_header(path), itk_information(path))
    assert direct is not None
    itk = sitk.ReadImage(str(path))
    assert_same_image(direct, itk)
    assert_same_image(read_image(path), itk)


def test_scaled_voxels_are_left_to_itk(tmp_path) -> None:
    values = np.arange(7 * 9 * 11, dtype=np.int16).reshape(7, 9, 11)
    path = write_nifti(tmp_path / "scaled.nii.gz", header_for(values, scl_slope=0.5), values)
    assert read_nifti_direct(path, read_nifti_header(path), itk_information(path)) is None
    image = read_image(path)  # ITK's reader: floats, scaled
    assert image.GetPixelID() == sitk.ReadImage(str(path)).GetPixelID()
    assert float(sitk.GetArrayViewFromImage(image)[0, 0, 3]) == pytest.approx(1.5)


def test_reading_holds_the_scan_once(tmp_path) -> None:
    values = np.random.default_rng(1).integers(-1000, 1000, (128, 256, 512), dtype=np.int16)
    path = write_nifti(tmp_path / "big.nii.gz", header_for(values), values)
    size = values.nbytes
    del values
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    before = process.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    image = read_image(path)
    done.set()
    sampler.join()
    assert image.GetSize() == (512, 256, 128)
    grown = peak[0] - before
    # ITK's own reader holds the decoded file and the image at once: twice the scan
    assert grown < 1.4 * size, f"reading {size / 2**20:.0f} MiB took {grown / 2**20:.0f} MiB"
