"""Reading and writing CT volumes and label maps with SimpleITK, validated up front.

Every problem a user can cause (missing file, not an image, truncated download, wrong number of
dimensions, NaN voxels, label values outside {0, 1, 2}) becomes one
:class:`~edgepanc.errors.InputError` line naming the file.

SimpleITK is lenient in two ways that matter here, so NIfTI headers are also checked by hand:
it zero-fills the missing part of a truncated ``.nii``/``.nii.gz`` without an error, and it reads
an axis of length 0 as length 1.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import struct
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edgepanc.errors import InputError
from edgepanc.io.atomic import atomic_path

log = logging.getLogger(__name__)

LABEL_VALUES = (0, 1, 2)
# Real masks of the pancreas data set store labels as floats such as 1.0000153.
LABEL_ROUNDING_TOLERANCE = 1e-3
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# DICOM UIDs: CT Image Storage, and a root for the UIDs we generate.
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class ImageInfo:
    """What an image header says, read without loading the voxels. Tuples are in (x, y, z)."""

    path: Path
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_type: str
    components: int

    @property
    def dimension(self) -> int:
        return len(self.size)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    # ITK prints warnings (e.g. "No Series were found") straight to stderr; we report our own line.
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


# --- NIfTI header checks ------------------------------------------------------------------------


def _read_head(path: Path, nbytes: int) -> bytes:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(nbytes)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"truncated or corrupt file ({exc})") from None


def _nifti_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """Return (axis lengths, expected uncompressed file length) from a NIfTI-1 or -2 header."""
    head = _read_head(path, 540)
    for endian in "<>":
        if len(head) >= 4 and struct.unpack(f"{endian}i", head[:4])[0] in (348, 540):
            break
    else:
        raise InputError(path, "not a NIfTI file (bad header)")
    if struct.unpack(f"{endian}i", head[:4])[0] == 348:
        if len(head) < 348:
            raise InputError(path, "truncated file (incomplete NIfTI header)")
        dim = struct.unpack(f"{endian}8h", head[40:56])
        bitpix = struct.unpack(f"{endian}h", head[72:74])[0]
        vox_offset = int(struct.unpack(f"{endian}f", head[108:112])[0])
    else:
        if len(head) < 540:
            raise InputError(path, "truncated file (incomplete NIfTI header)")
        bitpix = struct.unpack(f"{endian}h", head[14:16])[0]
        dim = struct.unpack(f"{endian}8q", head[16:80])
        vox_offset = struct.unpack(f"{endian}q", head[168:176])[0]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InputError(path, f"not a valid NIfTI header (dim[0] = {ndim})")
    shape = tuple(int(d) for d in dim[1 : ndim + 1])
    return shape, vox_offset + int(np.prod(shape, dtype=np.int64)) * bitpix // 8


def _uncompressed_length(path: Path) -> int:
    """Decompress ``path`` in chunks and return its length; raise InputError if it is cut short."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(path, f"truncated or corrupt gzip file ({exc})") from None
    return total


def _check_nifti_complete(path: Path, expected: int) -> None:
    if path.name.lower().endswith(".gz"):
        # Fast path: the gzip trailer stores the uncompressed length mod 2**32. A truncated file
        # ends in arbitrary bytes, so a match is strong evidence the file is whole; on a mismatch
        # (or a multi-member gzip) decompress it all to be sure.
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() >= 4:
                fh.seek(-4, os.SEEK_END)
                if struct.unpack("<I", fh.read(4))[0] == expected % 2**32:
                    return
        actual = _uncompressed_length(path)
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise InputError(path, f"truncated file ({actual} of {expected} bytes of image data)")


# --- headers --------------------------------------------------------------------------------


def _check_geometry(path: Path, size: tuple[int, ...], components: int) -> None:
    if len(size) != 3:
        raise InputError(path, f"is a {len(size)}D image of size {size}; need a 3D volume")
    if min(size) == 0:
        raise InputError(path, f"has an axis of length 0 (size {size})")
    if components != 1:
        raise InputError(path, f"has {components} values per voxel; need a scalar volume")


def _check_spacing(path: Path, spacing: tuple[float, ...]) -> None:
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(path, f"has invalid voxel spacing {spacing}; need positive values")


def inspect_image(path: str | Path) -> ImageInfo:
    """Read and validate a file's header without loading its voxels.

    Checks: the file exists and is an image, the volume is 3D and scalar with no zero-length axis
    and a positive spacing, and (for NIfTI) the file is not truncated. DICOM folders are read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        img = read_image(path)
        return image_info(path, img)
    if is_nifti(path):
        shape, expected = _nifti_layout(path)
        if min(shape) == 0:
            raise InputError(path, f"has an axis of length 0 (size {shape})")
        _check_nifti_complete(path, expected)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(path, "cannot be read as an image (unknown format or corrupt)") from None
    info = ImageInfo(
        path=path,
        size=tuple(reader.GetSize()),
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        components=reader.GetNumberOfComponents(),
    )
    _check_geometry(path, info.size, info.components)
    _check_spacing(path, info.spacing)
    return info


def image_info(path: Path, img: sitk.Image) -> ImageInfo:
    """The header facts of an image already in memory (same record as :func:`inspect_image`)."""
    return ImageInfo(
        path=path,
        size=tuple(img.GetSize()),
        spacing=tuple(img.GetSpacing()),
        origin=tuple(img.GetOrigin()),
        direction=tuple(img.GetDirection()),
        pixel_type=img.GetPixelIDTypeAsString(),
        components=img.GetNumberOfComponentsPerPixel(),
    )


# --- reading ----------------------------------------------------------------------------------


def is_dicom_series_folder(folder: Path) -> bool:
    """True if ``folder`` holds a DICOM series (GDCM finds at least one series ID)."""
    with _quiet_itk():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _read_dicom_series(folder: Path) -> sitk.Image:
    with _quiet_itk():
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(folder, "folder holds no DICOM series")
    files_per_series = {
        sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids
    }
    # Scanner exports often hold a localiser beside the CT: take the series with most slices.
    series_id = max(files_per_series, key=lambda sid: len(files_per_series[sid]))
    if len(series_ids) > 1:
        log.warning(
            "%s: holds %d DICOM series; reading %s (%d slices), the largest",
            folder,
            len(series_ids),
            series_id,
            len(files_per_series[series_id]),
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_per_series[series_id])
    try:
        with _quiet_itk():
            return reader.Execute()
    except RuntimeError:
        raise InputError(folder, "DICOM series cannot be read (corrupt or incomplete)") from None


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D scalar volume from NIfTI, NRRD, MHA/MHD or a DICOM series folder.

    The pixel type stays as stored (int16 CT stays int16); callers cast where they need floats.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        img = _read_dicom_series(path)
    else:
        inspect_image(path)
        try:
            with _quiet_itk():
                img = sitk.ReadImage(str(path))
        except RuntimeError:
            raise InputError(
                path, "cannot be read as an image (unknown format or corrupt)"
            ) from None
    _check_geometry(path, tuple(img.GetSize()), img.GetNumberOfComponentsPerPixel())
    _check_spacing(path, tuple(img.GetSpacing()))
    _check_finite(path, img)
    return img


def _check_finite(path: Path, img: sitk.Image) -> None:
    if img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return  # integer voxels are always finite
    values = sitk.GetArrayViewFromImage(img)
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(path, f"has {int(bad.sum())} NaN or infinite voxels")


def check_label_values(values: np.ndarray, path: str | Path) -> tuple[np.ndarray, str | None]:
    """Validate a label array and return it as uint8, plus a warning if floats were rounded.

    Integer labels must lie in {0, 1, 2}. Float labels within 1e-3 of an integer are rounded (the
    public data set stores 1.0000153); anything further off is an error naming the values.
    """
    path = Path(path)
    warning = None
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise InputError(path, "label map has NaN or infinite values")
        rounded = np.rint(values)
        off = np.abs(values - rounded) > LABEL_ROUNDING_TOLERANCE
        if off.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(values[off])[:5])
            raise InputError(path, f"label map has non-integer values: {examples}")
        if (rounded != values).any():
            worst = float(np.abs(values - rounded).max())
            warning = f"{path}: label values rounded to integers (largest deviation {worst:.2g})"
        values = rounded
    elif not np.issubdtype(values.dtype, np.integer) and values.dtype != np.bool_:
        raise InputError(path, f"label map has unsupported voxel type {values.dtype}")
    if values.size and (values.min() < 0 or values.max() > max(LABEL_VALUES)):
        outside = (values < 0) | (values > max(LABEL_VALUES))
        examples = ", ".join(f"{v:g}" for v in np.unique(values[outside])[:5])
        raise InputError(path, f"label values outside {{0, 1, 2}}: {examples}")
    return values.astype(np.uint8, copy=False), warning


def label_image_from_array(values: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 image of ``values`` (z, y, x) with exactly ``reference``'s geometry."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.uint8))
    out.CopyInformation(reference)
    return out


def read_label(path: str | Path) -> sitk.Image:
    """Read a label map (0 background, 1 pancreas, 2 lesion) as a uint8 image."""
    img = read_image(path)
    values, warning = check_label_values(sitk.GetArrayViewFromImage(img), path)
    if warning:
        log.warning("%s", warning)
    return label_image_from_array(values, img)


def looks_like_label(img: sitk.Image) -> bool:
    """True if ``img`` holds only (near-)integer values in 0..2: a mask, not a CT."""
    values = sitk.GetArrayViewFromImage(img)
    low, high = -LABEL_ROUNDING_TOLERANCE, max(LABEL_VALUES) + LABEL_ROUNDING_TOLERANCE
    if values.size == 0 or values.min() < low or values.max() > high:
        return False
    if np.issubdtype(values.dtype, np.floating):
        return bool((np.abs(values - np.rint(values)) <= LABEL_ROUNDING_TOLERANCE).all())
    return True


# --- writing -------------------------------------------------------------------------------


def write_label(
    label: sitk.Image | np.ndarray, path: str | Path, reference: sitk.Image | None = None
) -> None:
    """Write a uint8 label map (NIfTI by extension) atomically.

    With ``reference`` the output gets exactly its size, spacing, origin and direction (NIfTI
    stores them as float32, so they read back equal to that precision); an array is in (z, y, x)
    order and needs a reference unless identity geometry is wanted.
    """
    path = Path(path)
    if isinstance(label, np.ndarray):
        if label.ndim != 3:
            raise ValueError(f"label array must be 3D (z, y, x), got shape {label.shape}")
        values, _ = check_label_values(label, path)
        img = sitk.GetImageFromArray(np.ascontiguousarray(values))
    else:
        values, _ = check_label_values(sitk.GetArrayViewFromImage(label), path)
        img = label_image_from_array(values, label)
    if reference is not None:
        if img.GetSize() != reference.GetSize():
            raise ValueError(
                f"label size {img.GetSize()} does not match reference size {reference.GetSize()}"
            )
        img.CopyInformation(reference)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def _dicom_uid(suffix: str) -> str:
    # 2.25.<integer> is the UUID-derived UID root; it needs no registered organisation prefix.
    return f"2.25.{uuid.uuid4().int}{suffix}"


def write_dicom_series(img: sitk.Image, folder: str | Path) -> list[Path]:
    """Write ``img`` as an int16 CT DICOM series, one file per slice, into a new ``folder``.

    Geometry (spacing, origin, direction) is carried by the Image Position/Orientation tags so
    :func:`read_image` on the folder restores it. The direction must be right-handed, as DICOM's
    slice normal is the cross product of the row and column directions.
    """
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder}: already exists")
    direction = np.array(img.GetDirection()).reshape(3, 3)
    if np.linalg.det(direction) < 0:
        raise ValueError("DICOM needs a right-handed direction (determinant +1)")
    values = np.clip(np.rint(sitk.GetArrayViewFromImage(img)), -32768, 32767).astype(np.int16)
    volume = sitk.GetImageFromArray(values)
    volume.CopyInformation(img)
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    shared_tags = {
        "0008|0016": _CT_IMAGE_STORAGE,
        "0008|0060": "CT",
        "0020|000d": _dicom_uid(".1"),
        "0020|000e": _dicom_uid(".2"),
        "0020|0037": orientation,
        "0018|0050": f"{img.GetSpacing()[2]:.10g}",
        "0028|1052": "0",  # rescale intercept: stored values are HU
        "0028|1053": "1",
    }
    # Write into a temporary sibling folder and rename, so no partial series is ever visible.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(volume.GetDepth()):
            slice_img = volume[:, :, k]
            for tag, value in shared_tags.items():
                slice_img.SetMetaData(tag, value)
            position = volume.TransformIndexToPhysicalPoint((0, 0, k))
            slice_img.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
            slice_img.SetMetaData("0020|0013", str(k + 1))
            slice_img.SetMetaData("0008|0018", _dicom_uid(f".{k + 1}"))
            writer.SetFileName(str(tmp_dir / f"slice_{k:04d}.dcm"))
            writer.Execute(slice_img)
        os.replace(tmp_dir, folder)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return sorted(folder.glob("slice_*.dcm"))
