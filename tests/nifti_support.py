"""Hand-built NIfTI-1 files, so tests can write header fields no well-behaved writer produces."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# NIfTI-1 datatype codes and the numpy types they store.
DATATYPES: dict[int, np.dtype] = {
    2: np.dtype(np.uint8),
    4: np.dtype(np.int16),
    8: np.dtype(np.int32),
    16: np.dtype(np.float32),
    64: np.dtype(np.float64),
    256: np.dtype(np.int8),
    512: np.dtype(np.uint16),
}
HEADER_BYTES = 348
VOX_OFFSET = 352


@dataclass
class NiftiHeader:
    """The NIfTI-1 header fields the reader looks at; everything else is written as zero."""

    dim: Sequence[int] = (3, 4, 5, 6, 1, 1, 1, 1)
    datatype: int = 4
    bitpix: int | None = None  # None: from datatype
    pixdim: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    vox_offset: float = VOX_OFFSET
    scl_slope: float = 1.0
    scl_inter: float = 0.0
    qform_code: int = 0
    sform_code: int = 0
    quatern: Sequence[float] = (0.0, 0.0, 0.0)
    qoffset: Sequence[float] = (0.0, 0.0, 0.0)
    srow: Sequence[Sequence[float]] = field(
        default_factory=lambda: ((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 1.0, 0))
    )
    endian: str = "<"  # ">": a big-endian file (header and voxels)

    def pack(self) -> bytes:
        bitpix = self.bitpix
        if bitpix is None:
            bitpix = DATATYPES[self.datatype].itemsize * 8 if self.datatype in DATATYPES else 16
        head = bytearray(VOX_OFFSET)
        e = self.endian
        struct.pack_into(f"{e}i", head, 0, HEADER_BYTES)
        struct.pack_into(f"{e}8h", head, 40, *self.dim)
        struct.pack_into(f"{e}hh", head, 70, self.datatype, bitpix)
        struct.pack_into(f"{e}8f", head, 76, *self.pixdim)
        struct.pack_into(f"{e}3f", head, 108, self.vox_offset, self.scl_slope, self.scl_inter)
        struct.pack_into(f"{e}hh", head, 252, self.qform_code, self.sform_code)
        struct.pack_into(f"{e}6f", head, 256, *self.quatern, *self.qoffset)
        for row, values in enumerate(self.srow):
            struct.pack_into(f"{e}4f", head, 280 + 16 * row, *values)
        head[344:348] = b"n+1\x00"
        return bytes(head)


def nifti_bytes(header: NiftiHeader, values: np.ndarray | None = None) -> bytes:
    """Header then voxels (x fastest); ``values`` defaults to zeros of the declared shape."""
    if values is None:
        shape = tuple(int(d) for d in header.dim[1 : header.dim[0] + 1])
        values = np.zeros(shape[::-1], DATATYPES.get(header.datatype, np.dtype(np.int16)))
    stored = np.ascontiguousarray(values)
    stored = stored.astype(stored.dtype.newbyteorder(header.endian), copy=False)
    return header.pack() + stored.tobytes()


def write_nifti(path: Path, header: NiftiHeader, values: np.ndarray | None = None) -> Path:
    """Write ``.nii`` or ``.nii.gz`` (by suffix) of :func:`nifti_bytes`."""
    data = nifti_bytes(header, values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def header_for(values: np.ndarray, **fields: object) -> NiftiHeader:
    """A header describing ``values`` (z, y, x) with its datatype; ``fields`` override."""
    code = next(c for c, dt in DATATYPES.items() if dt == values.dtype)
    dim = (3, values.shape[2], values.shape[1], values.shape[0], 1, 1, 1, 1)
    return NiftiHeader(dim=dim, datatype=code, **fields)  # type: ignore[arg-type]
