"""NIfTI-1/-2 headers read by hand, because SimpleITK repairs or hides what is wrong in them.

ITK zero-fills the missing part of a truncated file, reads an axis of length 0 as 1, turns NaN
and infinite voxels into 0, replaces a zero or non-finite voxel width with 1 mm, and refuses a
slightly non-orthonormal sform as "no orthonormal definition found". Each is caught here from the
header (and, for float voxels, one streaming pass over the data) before ITK allocates anything.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepanc.errors import InputError

# Datatype code -> numpy type of one stored value (complex and RGB are refused later as vectors).
_DATATYPES: dict[int, str] = {
    2: "u1",
    4: "i2",
    8: "i4",
    16: "f4",
    32: "c8",
    64: "f8",
    128: "V3",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
    1792: "c16",
    2304: "V4",
}
_FLOAT_CODES = (16, 64)
# Deflate cannot compress better than about 1032:1, so a smaller file cannot hold the data.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 22
# Coordinates and scale factors past a kilometre are corrupt, not anatomy.
MAX_COORDINATE_MM = 1e6


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI header the reader checks; ``raw`` is the header as stored."""

    raw: bytes
    endian: str
    version: int
    shape: tuple[int, ...]
    datatype: int
    vox_offset: int
    pixdim: tuple[float, ...]
    scaling: tuple[float, float]  # scl_slope, scl_inter
    qform_code: int
    sform_code: int
    quatern: tuple[float, ...]  # quatern_b, c, d, qoffset_x, y, z
    srow: np.ndarray  # 3 x 4, RAS

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_DATATYPES[self.datatype]).newbyteorder(self.endian)

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize

    @property
    def file_bytes(self) -> int:
        """Uncompressed length the header promises: the voxels start at ``vox_offset``."""
        return self.vox_offset + self.data_bytes


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _open_fast(path: Path):
    """Like :func:`_open`, with ISA-L's inflate (about 1.5x zlib-ng's speed, 3x Python's zlib)
    where it is installed."""
    if not path.name.lower().endswith(".gz"):
        return open(path, "rb")
    try:
        from isal import igzip
    except ImportError:
        return gzip.open(path, "rb")
    return igzip.open(path, "rb")


def read_nifti_voxels_into(path: Path, header: NiftiHeader, out: np.ndarray) -> None:
    """Decompress the voxels of ``path`` straight into ``out`` (a writable C-contiguous array of
    ``header.data_bytes`` bytes, in the file's x-fastest order), swapped to native byte order:
    no second copy of the volume is ever held. InputError if the file ends early.

    Example: ``read_nifti_voxels_into(path, header, np.empty(header.shape[::-1], "<i2"))``.
    """
    target = out.reshape(-1).view(np.uint8)
    if target.size != header.data_bytes:
        raise ValueError(f"out holds {target.size} bytes, the file {header.data_bytes}")
    filled = 0
    try:
        with _open_fast(path) as fh:
            fh.seek(header.vox_offset)
            view = memoryview(target)
            # a bounded chunk at a time: gzip's readinto inflates a whole request into a temporary
            while filled < target.size and (count := fh.readinto(view[filled : filled + _CHUNK])):
                filled += count
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"truncated or corrupt file ({exc})") from None
    if filled < target.size:
        raise InputError(path, f"truncated file ({filled} of {target.size} bytes of image data)")
    if header.dtype.itemsize > 1 and header.endian != ("<" if sys.byteorder == "little" else ">"):
        target.view(header.dtype).byteswap(inplace=True)


def _read_head(path: Path, nbytes: int) -> bytes:
    try:
        with _open(path) as fh:
            return fh.read(nbytes)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"truncated or corrupt file ({exc})") from None


def read_nifti_header(path: Path) -> NiftiHeader:
    """Parse and sanity-check a NIfTI-1 or -2 header (InputError naming the field if invalid).

    Example: ``read_nifti_header(Path("ct.nii.gz")).shape`` -> ``(512, 512, 90)``.
    """
    head = _read_head(path, 540)
    for endian in "<>":
        if len(head) >= 4 and struct.unpack(f"{endian}i", head[:4])[0] in (348, 540):
            break
    else:
        raise InputError(path, "not a NIfTI file (bad header)")
    version = 1 if struct.unpack(f"{endian}i", head[:4])[0] == 348 else 2
    size = 348 if version == 1 else 540
    if len(head) < size:
        raise InputError(path, "truncated file (incomplete NIfTI header)")
    if version == 1:
        dim = struct.unpack(f"{endian}8h", head[40:56])
        datatype = struct.unpack(f"{endian}h", head[70:72])[0]
        pixdim = struct.unpack(f"{endian}8f", head[76:108])
        offset = struct.unpack(f"{endian}f", head[108:112])[0]
        scaling = struct.unpack(f"{endian}2f", head[112:120])
        qform_code, sform_code = struct.unpack(f"{endian}2h", head[252:256])
        quatern = struct.unpack(f"{endian}6f", head[256:280])
        srow = struct.unpack(f"{endian}12f", head[280:328])
    else:
        datatype = struct.unpack(f"{endian}h", head[12:14])[0]
        dim = struct.unpack(f"{endian}8q", head[16:80])
        pixdim = struct.unpack(f"{endian}8d", head[104:168])
        offset = struct.unpack(f"{endian}q", head[168:176])[0]
        scaling = struct.unpack(f"{endian}2d", head[176:192])
        qform_code, sform_code = struct.unpack(f"{endian}2i", head[344:352])
        quatern = struct.unpack(f"{endian}6d", head[352:400])
        srow = struct.unpack(f"{endian}12d", head[400:496])
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InputError(path, f"not a valid NIfTI header (dim[0] = {ndim})")
    shape = tuple(int(d) for d in dim[1 : ndim + 1])
    if min(shape) < 0:
        raise InputError(path, f"not a valid NIfTI header (negative axis length in {shape})")
    if datatype not in _DATATYPES:
        raise InputError(path, f"unsupported NIfTI datatype code {datatype}")
    if not np.isfinite(offset) or offset < 0:
        raise InputError(path, f"not a valid NIfTI header (voxel offset {offset})")
    # The NIfTI library reads the voxels no earlier than right after the header and its
    # extension flag, whatever a smaller offset says.
    vox_offset = max(int(offset), size + 4)
    return NiftiHeader(
        raw=head[:size],
        endian=endian,
        version=version,
        shape=shape,
        datatype=datatype,
        vox_offset=vox_offset,
        pixdim=tuple(float(p) for p in pixdim),
        scaling=(float(scaling[0]), float(scaling[1])),
        qform_code=int(qform_code),
        sform_code=int(sform_code),
        quatern=tuple(float(q) for q in quatern),
        srow=np.array(srow, dtype=np.float64).reshape(3, 4),
    )


def check_nifti_spacing(path: Path, header: NiftiHeader) -> None:
    """Refuse a zero or non-finite voxel width, which ITK silently replaces with 1 mm.

    Without a qform or sform the widths are the whole geometry and must be positive (ITK reads
    a negative one as a flipped axis); with one, the NIfTI library takes their magnitudes.
    """
    widths = header.pixdim[1 : 1 + min(3, len(header.shape))]
    oriented = header.qform_code > 0 or header.sform_code > 0
    if not all(np.isfinite(w) and (w != 0 if oriented else w > 0) for w in widths):
        shown = ", ".join(f"{w:g}" for w in widths)
        raise InputError(path, f"has invalid voxel spacing ({shown}); need positive values")


def check_nifti_geometry(path: Path, header: NiftiHeader) -> None:
    """Refuse non-finite or absurd qform/sform and scaling fields before ITK sees them.

    ITK's NIfTI reader loops forever on some sforms holding infinities, prints to stderr from
    its matrix routines on others, and reads a NaN quaternion as the identity.
    """
    fields: dict[str, tuple[float, ...]] = {"scl_slope, scl_inter": header.scaling}
    if header.qform_code > 0:
        fields["qform (quatern, qoffset, qfac)"] = (*header.quatern, header.pixdim[0])
    if header.sform_code > 0:
        fields["sform (srow)"] = tuple(header.srow.ravel())
    for name, values in fields.items():
        if not all(np.isfinite(v) and abs(v) <= MAX_COORDINATE_MM for v in values):
            shown = ", ".join(f"{v:g}" for v in values)
            raise InputError(path, f"has an invalid NIfTI {name}: {shown}")
    if header.sform_code > 0 and np.any(np.linalg.norm(header.srow[:, :3], axis=0) == 0):
        raise InputError(path, "has a degenerate NIfTI sform (an axis of length 0)")


def _uncompressed_length(path: Path, enough: int) -> int:
    """Decompress ``path`` in chunks until ``enough`` bytes; InputError if it is cut short."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < enough and (chunk := fh.read(_CHUNK)):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(path, f"truncated or corrupt gzip file ({exc})") from None
    return total


def check_nifti_complete(path: Path, header: NiftiHeader) -> None:
    """InputError if the file holds fewer bytes than its header promises."""
    expected = header.file_bytes
    if path.name.lower().endswith(".gz"):
        stored = path.stat().st_size
        if stored * _MAX_DEFLATE_RATIO < expected:
            raise InputError(
                path, f"truncated file ({stored} compressed bytes cannot hold {expected})"
            )
        # Fast path: the gzip trailer stores the uncompressed length mod 2**32. A truncated file
        # ends in arbitrary bytes, so below 4 GiB a match is strong evidence the file is whole;
        # otherwise (or on a mismatch, or a multi-member gzip) decompress as far as needed.
        if expected < 2**32 and stored >= 4:
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                if struct.unpack("<I", fh.read(4))[0] == expected:
                    return
        actual = _uncompressed_length(path, expected)
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise InputError(path, f"truncated file ({actual} of {expected} bytes of image data)")


def count_non_finite(path: Path, header: NiftiHeader) -> int:
    """NaN and infinite float voxels as stored (ITK reads them as 0); 0 for integer types."""
    if header.datatype not in _FLOAT_CODES:
        return 0
    dtype = header.dtype
    chunk = _CHUNK - _CHUNK % dtype.itemsize
    left = header.data_bytes
    bad = 0
    try:
        with _open(path) as fh:
            fh.seek(header.vox_offset)
            while left > 0 and (block := fh.read(min(chunk, left))):
                usable = len(block) - len(block) % dtype.itemsize
                bad += int((~np.isfinite(np.frombuffer(block[:usable], dtype))).sum())
                left -= len(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"truncated or corrupt file ({exc})") from None
    return bad


def orthonormal_sform(header: NiftiHeader) -> tuple[np.ndarray, float]:
    """The sform's rotation replaced by its nearest orthonormal matrix, and how far it moved.

    The polar factor ``U @ Vt`` of the direction cosines (columns scaled to unit length) is the
    closest orthonormal matrix; column lengths (the voxel widths) and the offset are kept.
    Example: a sform off by 2e-4 in one cosine -> (fixed 3 x 4 sform, about 1e-4).
    """
    matrix = header.srow[:, :3]
    widths = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(widths)) or np.any(widths == 0):
        return header.srow, float("inf")
    cosines = matrix / widths
    u, _, vt = np.linalg.svd(cosines)
    rotation = u @ vt
    fixed = header.srow.copy()
    fixed[:, :3] = rotation * widths
    return fixed, float(np.abs(cosines - rotation).max())


def _patched_header(header: NiftiHeader, srow: np.ndarray) -> bytes:
    raw = bytearray(header.raw)
    if header.version == 1:
        struct.pack_into(f"{header.endian}12f", raw, 280, *srow.ravel())
    else:
        struct.pack_into(f"{header.endian}12d", raw, 400, *srow.ravel())
    return bytes(raw)


@contextlib.contextmanager
def patched_copy(
    path: Path, header: NiftiHeader, srow: np.ndarray, with_voxels: bool
) -> Iterator[Path]:
    """A temporary uncompressed copy of ``path`` whose sform is ``srow`` (deleted afterwards).

    Without ``with_voxels`` only the header is copied: enough for reading the image information.
    """
    with tempfile.TemporaryDirectory(prefix="edgepanc-nifti-") as tmp:
        copy = Path(tmp) / "image.nii"
        with open(copy, "wb") as out:
            out.write(_patched_header(header, srow))
            if with_voxels:
                with _open(path) as fh:
                    fh.seek(len(header.raw))
                    while block := fh.read(_CHUNK):
                        out.write(block)
            else:
                out.write(b"\0" * (header.vox_offset - len(header.raw)))
        yield copy
