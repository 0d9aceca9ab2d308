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
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edgepanc.errors import BudgetError, InputError
from edgepanc.io.atomic import atomic_path
from edgepanc.io.nifti import (
    NiftiHeader,
    check_nifti_complete,
    check_nifti_geometry,
    check_nifti_spacing,
    count_non_finite,
    orthonormal_sform,
    patched_copy,
    read_nifti_header,
)
from edgepanc.io.nifti_direct import read_nifti_direct

log = logging.getLogger(__name__)

LABEL_VALUES = (0, 1, 2)
# Real masks of the pancreas data set store labels as floats such as 1.0000153.
LABEL_ROUNDING_TOLERANCE = 1e-3
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# The largest volume read at all, whatever the memory: a whole-body CT at 0.5 mm has about 2000
# slices of 512 x 512, so anything past these is a corrupt or hostile header, not a scan.
MAX_AXIS_LENGTH = 4096
MAX_VOXELS = 2**30
# Direction cosines this close to orthonormal (real exports carry float rounding of about 2e-4)
# are orthonormalised with a warning; further off, the geometry is wrong and the file is refused.
DIRECTION_TOLERANCE = 1e-3
# Directions stored as float32 are this far from orthonormal by rounding alone: kept as read.
ORTHONORMAL_ROUNDING = 1e-6
# No patient is taller than this; a longer axis is a corrupt spacing that would make the grid the
# scan is resampled onto explode.
MAX_EXTENT_MM = 5000.0
# Headers that may keep their voxels in other files, and how much of one is searched for them.
_DETACHED_SUFFIXES = (".mha", ".mhd", ".nhdr", ".nrrd")
_HEADER_SCAN_BYTES = 1 << 16
# The pipeline makes a float32 copy of every scan, so reading needs that much besides the scan.
FLOAT32_BYTES = 4

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
    # ITK prints warnings (e.g. "No Series were found") straight to stderr, and its MetaImage
    # and matrix code write to the C streams past that switch ("data not read completely"): the
    # user gets our one line, and what ITK wrote goes to the debug log.
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with _native_output_to_log():
            yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


@contextlib.contextmanager
def _native_output_to_log() -> Iterator[None]:
    """Send what native code writes to file descriptors 1 and 2 to the debug log meanwhile."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(fd) for fd in (1, 2)]
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("ITK said: %s", " | ".join(text.splitlines()))


# --- headers --------------------------------------------------------------------------------


def _check_geometry(path: Path, size: tuple[int, ...], components: int) -> None:
    if len(size) != 3:
        raise InputError(path, f"is a {len(size)}D image of size {size}; need a 3D volume")
    if min(size) == 0:
        raise InputError(path, f"has an axis of length 0 (size {size})")
    if components != 1:
        raise InputError(path, f"has {components} values per voxel; need a scalar volume")


def _check_spacing(path: Path, spacing: tuple[float, ...], size: tuple[int, ...]) -> None:
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(path, f"has invalid voxel spacing {spacing}; need positive values")
    extent = max(n * s for n, s in zip(size, spacing, strict=True))
    if extent > MAX_EXTENT_MM:
        raise InputError(
            path,
            f"spans {extent:.4g} mm (spacing {spacing}); no scan is over {MAX_EXTENT_MM:g} mm",
        )


def _direction_fix(path: Path, origin: tuple[float, ...], direction: tuple[float, ...]):
    """The nearest orthonormal direction and how far off the stored one is (refused past
    :data:`DIRECTION_TOLERANCE`); InputError for a non-finite origin or direction."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not (np.all(np.isfinite(origin)) and np.all(np.isfinite(matrix))):
        raise InputError(path, f"has a non-finite origin or direction ({origin}, {direction})")
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    off = float(np.abs(matrix - rotation).max())
    if off > DIRECTION_TOLERANCE:
        raise InputError(
            path,
            f"direction cosines are not orthonormal: off by {off:.2g}, more than the "
            f"{DIRECTION_TOLERANCE:g} that is corrected",
        )
    return tuple(rotation.ravel()), off


def check_declared_size(
    path: Path, size: tuple[int, ...], itemsize: int, max_bytes: int | None = None
) -> None:
    """Refuse, from the header alone, a volume too large to be a scan or to fit ``max_bytes``.

    Reading needs the voxels as stored plus the pipeline's float32 copy (or, for wider types,
    the decode buffer ITK holds beside the image). Example: ``check_declared_size(p, (512, 512,
    8192), 2, 10**9)`` raises BudgetError before a byte of voxels is read.
    """
    voxels = int(np.prod(size, dtype=object))
    needed = voxels * (itemsize + max(itemsize, FLOAT32_BYTES))
    if max_bytes is not None and needed > max_bytes:
        raise BudgetError(
            f"{path}: memory budget {max_bytes / 1e9:.2f} GB is too small; reading this "
            f"{' x '.join(str(n) for n in size)} scan needs at least {needed / 1e9:.2f} GB"
        )
    if max(size, default=0) > MAX_AXIS_LENGTH or voxels > MAX_VOXELS:
        shown = " x ".join(str(n) for n in size)
        raise InputError(
            path,
            f"header declares a {shown} volume; at most {MAX_AXIS_LENGTH} voxels per axis and "
            f"{MAX_VOXELS} in all are read (corrupt or hostile header?)",
        )


def _pixel_bytes(pixel_id: int) -> int:
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).itemsize


def _check_regular(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if not path.is_dir() and not path.is_file():
        raise InputError(path, "is not a regular file or folder (a device, FIFO or socket)")


def _checked_nifti_header(path: Path, max_bytes: int | None) -> NiftiHeader:
    header = read_nifti_header(path)
    if min(header.shape) == 0:
        raise InputError(path, f"has an axis of length 0 (size {header.shape})")
    check_declared_size(path, header.shape, header.dtype.itemsize, max_bytes)
    check_nifti_spacing(path, header)
    check_nifti_geometry(path, header)
    check_nifti_complete(path, header)
    return header


def _sform_fix(path: Path, header: NiftiHeader) -> np.ndarray:
    """The orthonormalised sform ITK needs, or InputError naming how far off the direction is."""
    srow, off = orthonormal_sform(header)
    if header.sform_code <= 0 or off == 0:
        raise InputError(path, "cannot be read as an image (unknown format or corrupt)")
    if off > DIRECTION_TOLERANCE:
        raise InputError(
            path,
            f"direction cosines (sform) are not orthonormal: off by {off:.2g}, more than the "
            f"{DIRECTION_TOLERANCE:g} that is corrected",
        )
    log.warning(
        "%s: direction cosines (sform) are not orthonormal (off by %.2g); orthonormalised",
        path,
        off,
    )
    return srow


def _read_information(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _quiet_itk():
        reader.ReadImageInformation()
    return reader


def _data_file_names(path: Path) -> list[str]:
    """The files a MetaImage or NRRD header reads its voxels from (none when they are inline)."""
    with open(path, "rb") as fh:
        text = fh.read(_HEADER_SCAN_BYTES).decode("latin-1")
    lines = text.splitlines()
    for index, line in enumerate(lines):
        key, sep, value = line.partition("=" if path.suffix.lower() in (".mha", ".mhd") else ":")
        key = key.strip().lower().replace(" ", "")
        if not sep or key not in ("elementdatafile", "datafile"):
            continue
        value = value.strip()
        if value.upper() == "LOCAL":
            return []
        if value.upper().startswith("LIST"):
            return [name.strip() for name in lines[index + 1 :] if name.strip()]
        return [value, value.split()[0]] if value else []  # the first word of a slice pattern
    return []


def _check_data_files_inside(path: Path) -> None:
    # A header may name any file as its voxels (/etc/passwd, ../../other_patient.raw); only
    # files beside it, in its folder or below, are read.
    if path.suffix.lower() not in _DETACHED_SUFFIXES:
        return
    folder = path.parent.resolve()
    for name in _data_file_names(path):
        target = (folder / name).resolve()
        if not target.is_relative_to(folder):
            raise InputError(path, f"names a data file outside its folder ({name}); refused")


def inspect_image(path: str | Path, max_bytes: int | None = None) -> ImageInfo:
    """Read and validate a file's header without loading its voxels.

    Checks: the file exists and is a regular file, it is an image, the volume is 3D and scalar
    with no zero-length axis and a positive spacing, its declared size is sane and (reading it
    with its float32 copy) within ``max_bytes``, and (for NIfTI) the file is not truncated.
    DICOM folders are read. Example: ``inspect_image("ct.nii.gz").size`` -> ``(512, 512, 90)``.
    """
    path = Path(path)
    _check_regular(path)
    if path.is_dir():
        img = read_image(path, max_bytes=max_bytes)
        return image_info(path, img)
    _check_data_files_inside(path)
    header = _checked_nifti_header(path, max_bytes) if is_nifti(path) else None
    try:
        reader = _read_information(path)
    except RuntimeError:
        if header is None:
            raise InputError(
                path, "cannot be read as an image (unknown format or corrupt)"
            ) from None
        with patched_copy(path, header, _sform_fix(path, header), with_voxels=False) as copy:
            reader = _read_information(copy)
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
    itemsize = _pixel_bytes(reader.GetPixelID())
    check_declared_size(path, info.size, itemsize, max_bytes)
    _check_spacing(path, info.spacing, info.size)
    _direction_fix(path, info.origin, info.direction)
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


def _slice_positions(folder: Path, files: tuple[str, ...]) -> np.ndarray | None:
    """Each file's ImagePositionPatient projected on the slice normal; None if a tag is missing."""
    positions = []
    normal = None
    for name in files:
        try:
            reader = _read_information(Path(name))
        except RuntimeError:
            raise InputError(folder, f"DICOM file {Path(name).name} cannot be read") from None
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            return None
        try:
            position = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            cosines = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
        except ValueError:
            raise InputError(folder, f"DICOM file {Path(name).name}: unreadable position") from None
        if len(position) != 3 or len(cosines) != 6:
            raise InputError(folder, f"DICOM file {Path(name).name}: malformed position tags")
        if normal is None:
            normal = np.cross(cosines[:3], cosines[3:])
        positions.append(float(np.dot(position, normal)))
    return np.sort(np.array(positions))


def _check_slice_spacing(folder: Path, files: tuple[str, ...]) -> None:
    # ITK stacks the files on one averaged spacing and only warns (hidden here) when a slice is
    # missing, which would put every slice after the gap at the wrong place.
    if len(files) < 2:
        return
    positions = _slice_positions(folder, files)
    if positions is None:
        return
    gaps = np.diff(positions)
    step = float(np.median(gaps))
    if gaps.min() <= 1e-3 * max(step, 1e-3):
        raise InputError(folder, "DICOM series has two slices at the same position")
    uneven = np.abs(gaps - step) > 0.01 * step + 1e-3
    if uneven.any():
        worst = float(gaps[np.argmax(np.abs(gaps - step))])
        raise InputError(
            folder,
            f"DICOM slices are not evenly spaced (a {worst:.3g} mm gap where the series steps "
            f"{step:.3g} mm: a missing slice?)",
        )


def _read_dicom_series(folder: Path, max_bytes: int | None) -> sitk.Image:
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
    files = tuple(files_per_series[series_id])
    try:
        first = _read_information(Path(files[0]))
    except RuntimeError:
        raise InputError(folder, "DICOM series cannot be read (corrupt or incomplete)") from None
    rows_cols = tuple(first.GetSize()[:2])
    itemsize = _pixel_bytes(first.GetPixelID())
    check_declared_size(folder, (*rows_cols, len(files)), itemsize, max_bytes)
    _check_slice_spacing(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with _quiet_itk():
            return reader.Execute()
    except RuntimeError:
        raise InputError(folder, "DICOM series cannot be read (corrupt or incomplete)") from None


def _itk_read(file: Path, named: Path) -> sitk.Image:
    try:
        with _quiet_itk():
            return sitk.ReadImage(str(file))
    except RuntimeError:
        raise InputError(named, "cannot be read as an image (unknown format or corrupt)") from None


def _read_nifti(path: Path, max_bytes: int | None) -> sitk.Image:
    header = _checked_nifti_header(path, max_bytes)
    bad = count_non_finite(path, header)
    if bad:
        raise InputError(path, f"has {bad} NaN or infinite voxels")
    try:
        direct = read_nifti_direct(path, header, _read_information(path))
        if direct is not None:
            return direct
        with _quiet_itk():
            return sitk.ReadImage(str(path))
    except RuntimeError:
        srow = _sform_fix(path, header)
    with patched_copy(path, header, srow, with_voxels=True) as copy:
        img = _itk_read(copy, named=path)
    # ITK's cosines come from the float32 copy; set the exact polar factor (RAS -> LPS).
    cosines = srow[:, :3] / np.linalg.norm(srow[:, :3], axis=0)
    img.SetDirection(tuple((np.diag([-1.0, -1.0, 1.0]) @ cosines).ravel()))
    return img


def read_image(path: str | Path, max_bytes: int | None = None) -> sitk.Image:
    """Read a 3D scalar volume from NIfTI, NRRD, MHA/MHD or a DICOM series folder.

    The pixel type stays as stored (int16 CT stays int16); callers cast where they need floats.
    ``max_bytes`` bounds the memory reading may take (the scan and its float32 copy), checked
    against the header before any voxel is read. Example: ``read_image("ct.nii.gz", 2 * 10**9)``.
    """
    path = Path(path)
    _check_regular(path)
    if path.is_dir():
        img = _read_dicom_series(path, max_bytes)
    elif is_nifti(path):
        img = _read_nifti(path, max_bytes)
    else:
        inspect_image(path, max_bytes=max_bytes)
        img = _itk_read(path, named=path)
    return check_image(img, path)


def check_image(img: sitk.Image, source: str | Path) -> sitk.Image:
    """Check a volume as :func:`read_image` checks what it reads (3D, scalar, spacing, geometry,
    finite voxels); InputError naming ``source`` otherwise. A direction slightly off
    orthonormal is corrected in ``img`` with a warning. The Python API checks images in memory.

    Example: ``check_image(sitk.Image([64, 64, 32], sitk.sitkInt16), "image")`` -> that image.
    """
    path = Path(source)
    _check_geometry(path, tuple(img.GetSize()), img.GetNumberOfComponentsPerPixel())
    _check_spacing(path, tuple(img.GetSpacing()), tuple(img.GetSize()))
    direction, off = _direction_fix(path, img.GetOrigin(), img.GetDirection())
    if off > ORTHONORMAL_ROUNDING:
        log.warning(
            "%s: direction cosines are not orthonormal (off by %.2g); orthonormalised", path, off
        )
        img.SetDirection(direction)
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
        ready = label.GetPixelID() == sitk.sitkUInt8 and reference is None
        # a valid uint8 image is written as it is: no second full-size copy of a whole CT's mask
        img = label if ready else label_image_from_array(values, label)
        del values
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
        "0020|0052": _dicom_uid(".3"),  # frame of reference: a DICOM SEG needs it
        "0020|0037": orientation,
        "0018|0050": f"{img.GetSpacing()[2]:.10g}",
        "0028|1052": "0",  # rescale intercept: stored values are HU
        "0028|1053": "1",
    }
    if img.HasMetaDataKey("ITK_FileNotes"):  # e.g. edgepanc.synth.marker's phantom note
        shared_tags["0020|4000"] = img.GetMetaData("ITK_FileNotes")
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
