"""A scan on its way to the network, resampled only where the network will look.

The runtime's coarse-to-fine pass tiles a box round the pancreas, about a tenth of an abdominal
CT. Resampling and normalising the whole scan onto the network's grid first, then reading it
again at the end for its Hounsfield units, cost more than a second on a 512 x 512 x 300 CT and
a float32 copy of it. :class:`NetworkInput` keeps the scan as read and makes each network input
on demand: the coarse volume straight from the scan at the coarse spacing, the fine volume only
inside the box the fine pass tiles (the same values a whole-grid resample has there), and the
preview's three planes. Once the fine volume is made only the part of the scan the mask can
reach stays, for measuring the mask on its own grid (:meth:`NetworkInput.release_outside`); the
previews take their context outside it from the coarse volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from edgepanc.preprocessing.normalization import normalize_ct
from edgepanc.preprocessing.pipeline import (
    Geometry,
    GridRecord,
    network_box_geometry,
    network_grid,
    reachable_box,
    resample_box_for_network,
)
from edgepanc.preprocessing.plan import PreprocessingPlan
from edgepanc.preprocessing.resampling import (
    image_minimum,
    resample_onto,
    resample_to_spacing,
    resampled_size,
)

Box = tuple[slice, slice, slice]


class NetworkInput:
    """``image`` (as read) with the grid record of its way to the network and back.

    Example::

        source = NetworkInput(read_image(scan), model.plan)
        coarse = source.coarse((2, 2, 2))  # normalised, at twice the plan's spacing
        volume = source.fine(box)  # normalised inside ``box``, zeros elsewhere
        planes = source.hu_planes((60, 150, 150))  # axial, coronal, sagittal (HU)
    """

    def __init__(self, image: sitk.Image, plan: PreprocessingPlan) -> None:
        self.image = image
        self.plan = plan
        self.grid: GridRecord = network_grid(image, plan)
        # what resampling pads with beyond the scan, found once for every resample of it
        self.pad = image_minimum(image)
        # the (z, y, x) part of the scan ``image`` still holds, in its own voxel order (None: all)
        self.image_box: Box | None = None
        # the scan in HU on the coarse grid, once :meth:`coarse` made it: the previews' context
        # once the rest of the scan is released
        self.overview: sitk.Image | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) of the whole scan on the network's grid."""
        return self.grid.resampled.shape

    def coarse_spacing(self, factors: Sequence[float]) -> tuple[float, float, float]:
        """(z, y, x) spacing of :meth:`coarse`'s grid: the plan's times ``factors`` per axis,
        counted on this scan's network grid (so a factor of ``n / k`` makes ``k`` voxels of an
        ``n``-voxel axis, exactly)."""
        extent = np.asarray(self.grid.canonical.shape) * np.asarray(
            list(reversed(self.grid.canonical.spacing))
        )
        spacing = extent / np.asarray(self.shape) * np.asarray(factors, dtype=float)
        return float(spacing[0]), float(spacing[1]), float(spacing[2])

    def coarse_shape(self, factors: Sequence[float]) -> tuple[int, int, int]:
        """(z, y, x) of :meth:`coarse`'s volume."""
        canonical = self.grid.canonical
        spacing_xyz = list(reversed(self.coarse_spacing(factors)))
        x, y, z = resampled_size(canonical.size, canonical.spacing, spacing_xyz)
        return z, y, x

    def coarse(self, factors: Sequence[float]) -> np.ndarray:
        """The whole scan normalised at ``factors`` (z, y, x) times the plan's spacing (the
        coarse pass's input), resampled straight from the scan: float32 (z, y, x) of
        :meth:`coarse_shape`."""
        canonical = self.grid.canonical
        frame = (canonical.size, canonical.spacing, canonical.origin, canonical.direction)
        spacing = self.coarse_spacing(factors)
        resampled = resample_to_spacing(self.image, spacing, is_label=False, frame=frame)
        self.overview = resampled
        return normalize_ct(sitk.GetArrayFromImage(resampled), self.plan, in_place=True)

    def fine(self, box: Box | None = None) -> np.ndarray:
        """The scan normalised on the network's grid inside ``box`` (default: everywhere), zeros
        elsewhere. The array has the whole grid's shape, so tile coordinates stay the whole
        volume's; pages outside the box are never written, so they take no memory.
        """
        if self.image_box is not None:
            raise RuntimeError("the scan outside the fine box was released: resample it first")
        whole = tuple(slice(0, n) for n in self.shape)
        box = whole if box is None else box
        volume = np.zeros(self.shape, dtype=np.float32)  # zero pages cost nothing until written
        values = resample_box_for_network(self.image, self.grid, box, self.pad)  # type: ignore[arg-type]
        volume[box] = normalize_ct(values, self.plan, in_place=True)
        return volume

    def release_outside(self, box: Box) -> None:
        """Keep only the part of the scan that a mask restored from labels inside the network
        grid's ``box`` can reach (all that measuring the mask reads; :attr:`image_box` says
        where it lies); the rest of the scan's voxels go. Call it after the last :meth:`fine`;
        :meth:`hu_planes` then take what lies outside from the coarse volume.
        """
        kept = reachable_box(box, self.grid)
        if kept is None:
            return
        z, y, x = kept
        size = [x.stop - x.start, y.stop - y.start, z.stop - z.start]
        self.image = sitk.RegionOfInterest(self.image, size, [x.start, y.start, z.start])
        self.image_box = kept

    def hu_planes(self, centre: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The axial, coronal and sagittal planes through ``centre`` (z, y, x) of the whole
        network grid, in HU (float32): what a preview draws. After :meth:`release_outside`
        the part of each plane outside the kept scan comes from the coarse volume (blurrier:
        context, not the organ).
        """
        z, y, x = (int(c) for c in centre)
        everything = slice(None)
        boxes = [
            (slice(z, z + 1), everything, everything),
            (everything, slice(y, y + 1), everything),
            (everything, everything, slice(x, x + 1)),
        ]
        planes = []
        for axis, box in enumerate(boxes):
            resolved = tuple(
                slice(*sl.indices(n)[:2]) for sl, n in zip(box, self.shape, strict=True)
            )
            planes.append(np.take(self._plane(resolved), 0, axis=axis))  # type: ignore[arg-type]
        return planes[0], planes[1], planes[2]

    def _plane(self, box: Box) -> np.ndarray:
        if self.image_box is None:
            return resample_box_for_network(self.image, self.grid, box, self.pad)
        if self.overview is None:
            raise RuntimeError("the scan was released before a coarse volume was made")
        geometry = network_box_geometry(self.grid, box)
        plane = _resampled(self.overview, geometry, self.pad)
        kept = _resampled(self.image, geometry, float("nan"))  # NaN beyond the kept part
        inside = ~np.isnan(kept)
        plane[inside] = kept[inside]
        return plane


def _resampled(image: sitk.Image, geometry: Geometry, pad: float) -> np.ndarray:
    out = resample_onto(
        image,
        geometry.size,
        geometry.spacing,
        geometry.origin,
        geometry.direction,
        is_label=False,
        pad=pad,
    )
    return sitk.GetArrayFromImage(out)


__all__ = ["NetworkInput"]
