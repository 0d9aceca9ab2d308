"""From a scan to the network's grid and back.

``preprocess_image`` reorients to the canonical orientation, resamples to the plan's spacing and
normalises intensities, recording every grid on the way in a :class:`GridRecord`.
``restore_label`` walks the same way back, so a prediction lands on exactly the input's grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from edgepanc.preprocessing.normalization import normalize_ct
from edgepanc.preprocessing.orientation import from_canonical, orientation_of, to_canonical
from edgepanc.preprocessing.plan import PreprocessingPlan
from edgepanc.preprocessing.resampling import resample_onto, resample_to_spacing

GEOMETRY_TOLERANCE = 1e-4  # relative, as in the data set integrity check


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in SimpleITK terms: size, spacing and origin in (x, y, z), row-major direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, img: sitk.Image) -> Geometry:
        return cls(
            tuple(img.GetSize()),  # type: ignore[arg-type]
            tuple(img.GetSpacing()),  # type: ignore[arg-type]
            tuple(img.GetOrigin()),  # type: ignore[arg-type]
            tuple(img.GetDirection()),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x) of an image on this grid."""
        return self.size[2], self.size[1], self.size[0]

    def matches(self, other: Geometry) -> bool:
        """Same size, and spacing, origin and direction equal within the relative tolerance."""
        if self.size != other.size:
            return False
        for a, b in (
            (self.spacing, other.spacing),
            (self.origin, other.origin),
            (self.direction, other.direction),
        ):
            a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
            scale = np.maximum(1.0, np.maximum(np.abs(a_), np.abs(b_)))
            if (np.abs(a_ - b_) > GEOMETRY_TOLERANCE * scale).any():
                return False
        return True

    def stamp(self, img: sitk.Image) -> sitk.Image:
        """Give ``img`` (same size) exactly this grid's spacing, origin and direction, in place."""
        if tuple(img.GetSize()) != self.size:
            raise ValueError(f"image size {img.GetSize()} does not match grid size {self.size}")
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        return cls(*(tuple(data[k]) for k in ("size", "spacing", "origin", "direction")))  # type: ignore[arg-type]


@dataclass(frozen=True)
class GridRecord:
    """The grids a scan passed through: as read, reoriented, and resampled for the network."""

    original: Geometry
    original_orientation: str
    canonical: Geometry
    resampled: Geometry

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridRecord:
        return cls(
            Geometry.from_dict(data["original"]),
            str(data["original_orientation"]),
            Geometry.from_dict(data["canonical"]),
            Geometry.from_dict(data["resampled"]),
        )


def preprocess_image(img: sitk.Image, plan: PreprocessingPlan) -> tuple[np.ndarray, GridRecord]:
    """The network input for ``img`` as float32 (z, y, x), and the record needed to invert it."""
    canonical = to_canonical(img)
    resampled = resample_to_spacing(canonical, plan.target_spacing, is_label=False)
    grid = GridRecord(
        original=Geometry.of(img),
        original_orientation=orientation_of(img.GetDirection()),
        canonical=Geometry.of(canonical),
        resampled=Geometry.of(resampled),
    )
    return normalize_ct(sitk.GetArrayViewFromImage(resampled), plan), grid


def _resample_label_onto(label: sitk.Image, grid: Geometry) -> sitk.Image:
    return resample_onto(label, grid.size, grid.spacing, grid.origin, grid.direction, is_label=True)


def preprocess_label(label: sitk.Image, grid: GridRecord) -> np.ndarray:
    """``label`` (on the image's original grid) as uint8 (z, y, x) on the preprocessed grid."""
    if not Geometry.of(label).matches(grid.original):
        raise ValueError(
            f"label grid {Geometry.of(label)} does not match the image grid {grid.original}"
        )
    resampled = _resample_label_onto(to_canonical(label), grid.resampled)
    return sitk.GetArrayFromImage(resampled)


def restore_label(label_zyx: np.ndarray, grid: GridRecord) -> sitk.Image:
    """Map a label map on the preprocessed grid back onto the original input grid (uint8).

    Each nested region (label >= 1: the whole pancreas, then label >= 2: the lesion) is resampled
    as a 0/255 map with linear interpolation and kept where it reaches one half: on the finer
    input grid the boundary then follows the region's outline instead of the coarse voxels'
    staircase (the byte-per-voxel counterpart of nnU-Net resampling probabilities; on phantoms it
    raised the whole-pancreas Dice of a perfect label restored from 3 x 2 x 2 mm from 0.938 to
    0.950). Where the grids coincide it returns the label unchanged. The axes are then
    permuted/flipped back; the result carries exactly the input's size, spacing, origin and
    direction.
    """
    if tuple(label_zyx.shape) != grid.resampled.shape:
        raise ValueError(
            f"label shape {label_zyx.shape} does not match the preprocessed shape {grid.resampled.shape}"
        )
    target = grid.canonical
    canonical = np.zeros(target.shape, dtype=np.uint8)
    for value in range(1, int(label_zyx.max(initial=0)) + 1):
        region = np.where(label_zyx >= value, np.uint8(255), np.uint8(0))
        on_network_grid = grid.resampled.stamp(sitk.GetImageFromArray(region))
        del region
        resampled = sitk.Resample(
            on_network_grid,
            list(target.size),
            sitk.Transform(),
            sitk.sitkLinear,
            list(target.origin),
            list(target.spacing),
            list(target.direction),
            0.0,
            sitk.sitkUInt8,
        )
        canonical[sitk.GetArrayViewFromImage(resampled) >= 128] = value
        del resampled, on_network_grid
    restored = target.stamp(sitk.GetImageFromArray(canonical))
    del canonical
    return grid.original.stamp(from_canonical(restored, grid.original_orientation))
