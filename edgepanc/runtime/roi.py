"""Coarse-to-fine: find the pancreas at half resolution, then tile only its box at full.

The pancreas fills a few percent of an abdominal CT. A cheap pass over the scan resampled at
about ``factor`` times the network's spacing (:func:`coarse_factors`: ``factor**3`` times fewer
voxels or more, tiles without overlap;
:meth:`~edgepanc.preprocessing.network_input.NetworkInput.coarse`) finds the organ; the
full-resolution pass then tiles only its bounding box grown by a margin (default 25 mm), with
the tiles a whole-volume pass would put there (so the two agree inside the box, and the tiles
reach past it, giving the organ's edge context). When the coarse pass finds nothing the caller
tiles the whole volume and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edgepanc.inferers.tiling import Region, grow_box

Box = Region


@dataclass(frozen=True)
class RoiConfig:
    """When and how the coarse pass runs.

    ``mode``: "on", "off" or "auto" (on when the volume holds more than ``auto_min_patches``
    patches' worth of voxels at target spacing).
    """

    mode: str = "auto"
    # The coarse grid is at least ``factor`` times coarser than the network's per axis, and up to
    # ``max_factor`` where that makes it a whole number of patches: tiles that overlap because
    # the volume is a little longer than they are cost time and find nothing more.
    factor: float = 2.0
    max_factor: float = 2.5
    # What the coarse pass may miss of the organ's edge: 25 mm keeps agreement with whole-volume
    # tiling at 0.99 or more with 11-25x fewer tiles (docs/measurements/coarse_to_fine.md).
    margin_mm: float = 25.0
    coarse_step: float = 1.0  # no overlap: the coarse pass only needs to find the organ
    auto_min_patches: float = 8.0


def should_use_roi(
    volume_shape: Sequence[int], patch_size: Sequence[int], config: RoiConfig
) -> bool:
    """Whether the coarse pass pays off for a volume of this shape."""
    if config.mode == "on":
        return True
    if config.mode == "off":
        return False
    if config.mode != "auto":
        raise ValueError(f"roi mode must be auto, on or off, got {config.mode!r}")
    patches = math.prod(volume_shape) / math.prod(patch_size)
    return patches > config.auto_min_patches


def coarse_factors(
    shape: Sequence[int], patch_size: Sequence[int], config: RoiConfig
) -> tuple[float, float, float]:
    """Per axis, how much coarser than the network's grid (of ``shape``) the coarse pass's grid
    is: ``config.factor``, or up to ``config.max_factor`` where that fits the axis into a whole
    number of patches.

    Example: ``coarse_factors((264, 302, 302), (32, 64, 64), RoiConfig())`` ->
    ``(2.0625, 2.359375, 2.359375)``: 128 voxels per axis, 4 x 2 x 2 tiles instead of 5 x 3 x 3.
    """
    factors = []
    for n, p in zip(shape, patch_size, strict=True):
        whole = math.floor(n / (config.factor * p))  # patches that fit at the smallest factor
        fits = whole >= 1 and n / (whole * p) <= config.max_factor
        factors.append(n / (whole * p) if fits else config.factor)
    return factors[0], factors[1], factors[2]


def scale_box(box: Box, from_shape: Sequence[int], to_shape: Sequence[int]) -> Box:
    """Map a box on a coarse grid onto a finer grid covering the same extent (rounded outward)."""
    out = []
    for sl, n_from, n_to in zip(box, from_shape, to_shape, strict=True):
        ratio = n_to / n_from
        start = max(0, math.floor(sl.start * ratio))
        stop = min(n_to, math.ceil(sl.stop * ratio))
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


def expand_box(
    box: Box, shape: Sequence[int], spacing_zyx: Sequence[float], margin_mm: float
) -> Box:
    """Grow ``box`` by ``margin_mm`` per side (what the coarse pass may have missed), clipped.

    The fine pass then tiles it with the whole-volume plan's tiles that cover it
    (:func:`~edgepanc.inferers.sliding_window.plan_sliding_window`), which always adds context
    and never leaves a box smaller than a patch.
    """
    margins = [math.ceil(margin_mm / spacing) for spacing in spacing_zyx]
    return grow_box(box, shape, margins)


def box_to_list(box: Box | None) -> list[list[int]] | None:
    """``[[start, stop], ...]`` per axis (z, y, x) for the case JSON."""
    if box is None:
        return None
    return [[int(sl.start), int(sl.stop)] for sl in box]


def box_fraction(box: Box, shape: Sequence[int]) -> float:
    """Share of the volume's voxels inside the box."""
    return math.prod(sl.stop - sl.start for sl in box) / math.prod(shape)
