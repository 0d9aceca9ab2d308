"""Voxel grids in patient (LPS) millimetres.

The anatomy is a set of functions of physical position, so a phantom looks the same whatever the
spacing; a :class:`Grid` only decides where those functions are sampled. Arrays are (z, y, x) as
everywhere in edgepanc; the direction is diag(-1, -1, 1), as in the real data set, so the x and y
index axes run towards the patient's right and front.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Direction cosines of every phantom (SimpleITK row-major 3x3), the LPS->RAS flip of the real data.
DIRECTION: tuple[float, ...] = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in LPS millimetres, ``lo`` and ``hi`` as (x, y, z)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def expand(self, margin: tuple[float, float, float]) -> Box:
        lo = tuple(a - m for a, m in zip(self.lo, margin, strict=True))
        hi = tuple(a + m for a, m in zip(self.hi, margin, strict=True))
        return Box(lo, hi)  # type: ignore[arg-type]

    def union(self, other: Box) -> Box:
        lo = tuple(min(a, b) for a, b in zip(self.lo, other.lo, strict=True))
        hi = tuple(max(a, b) for a, b in zip(self.hi, other.hi, strict=True))
        return Box(lo, hi)  # type: ignore[arg-type]

    @property
    def centre(self) -> tuple[float, float, float]:
        return tuple((a + b) / 2 for a, b in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]


def box_around(points: np.ndarray, radius: float) -> Box:
    """The box holding ``points`` (N, 3 as x, y, z) grown by ``radius`` on every side."""
    lo = points.min(axis=0) - radius
    hi = points.max(axis=0) + radius
    return Box(tuple(lo.tolist()), tuple(hi.tolist()))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Grid:
    """Where a phantom is sampled: shape and spacing (z, y, x), origin of voxel 0 in LPS (x, y, z)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS coordinate of every index along z, y and x (x and y decrease: direction -1)."""
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        z = self.origin[2] + np.arange(nz) * sz
        y = self.origin[1] - np.arange(ny) * sy
        x = self.origin[0] - np.arange(nx) * sx
        return z, y, x

    @property
    def sitk_spacing(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])


def grid_covering(box: Box, spacing: tuple[float, float, float]) -> Grid:
    """The smallest grid with ``spacing`` (z, y, x) that covers ``box``."""
    sz, sy, sx = spacing
    size = [box.hi[i] - box.lo[i] for i in range(3)]  # x, y, z
    shape = (
        math.ceil(size[2] / sz) + 1,
        math.ceil(size[1] / sy) + 1,
        math.ceil(size[0] / sx) + 1,
    )
    # Index 0 sits at the largest x and y because those axes run backwards.
    return Grid(shape, spacing, (box.hi[0], box.hi[1], box.lo[2]))


def grid_centred(
    centre: tuple[float, float, float],
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> Grid:
    """A grid of ``shape`` whose middle voxel sits at ``centre`` (LPS x, y, z)."""
    nz, ny, nx = shape
    sz, sy, sx = spacing
    origin = (
        centre[0] + (nx - 1) / 2 * sx,
        centre[1] + (ny - 1) / 2 * sy,
        centre[2] - (nz - 1) / 2 * sz,
    )
    return Grid(shape, spacing, origin)


def index_range(coords: np.ndarray, lo: float, hi: float) -> slice | None:
    """The index slice of a monotonic coordinate vector that falls inside [lo, hi]."""
    inside = np.nonzero((coords >= lo) & (coords <= hi))[0]
    if inside.size == 0:
        return None
    return slice(int(inside[0]), int(inside[-1]) + 1)


@dataclass
class Block:
    """A writable window of the phantom with the LPS coordinates of its voxels per axis."""

    hu: np.ndarray
    label: np.ndarray
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @property
    def zz(self) -> np.ndarray:
        return self.z[:, None, None]

    @property
    def yy(self) -> np.ndarray:
        return self.y[None, :, None]

    @property
    def xx(self) -> np.ndarray:
        return self.x[None, None, :]

    def points(self, index: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """LPS (x, y, z) of the voxels at ``index`` (a tuple of index arrays), as (N, 3)."""
        return np.stack([self.x[index[2]], self.y[index[1]], self.z[index[0]]], axis=1)


def iter_blocks(
    hu: np.ndarray,
    label: np.ndarray,
    grid: Grid,
    box: Box,
    max_slices: int = 24,
) -> Iterator[Block]:
    """Windows of the grid inside ``box``, a few slices at a time to bound temporary memory."""
    z, y, x = grid.axes()
    sz = index_range(z, box.lo[2], box.hi[2])
    sy = index_range(y, box.lo[1], box.hi[1])
    sx = index_range(x, box.lo[0], box.hi[0])
    if sz is None or sy is None or sx is None:
        return
    for start in range(sz.start, sz.stop, max_slices):
        cz = slice(start, min(start + max_slices, sz.stop))
        # float32 coordinates: every painter's arithmetic then runs in single precision.
        yield Block(
            hu[cz, sy, sx],
            label[cz, sy, sx],
            *(a.astype(np.float32) for a in (z[cz], y[sy], x[sx])),
        )
