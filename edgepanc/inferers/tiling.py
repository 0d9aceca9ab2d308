"""Tiling geometry shared by every sliding-window consumer (validation, streaming, baseline).

Pure numpy functions: where tiles start, in which order they are visited, how much each voxel of
a tile counts when overlapping predictions are blended, how a volume smaller than the patch is
padded, and the boxes (:data:`Region`) that the coarse pass and post-processing crop to. Arrays
and sizes are in (z, y, x) order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Corner = tuple[int, int, int]
Region = tuple[slice, slice, slice]  # a box of a volume, (z, y, x)


def compute_steps_for_sliding_window(
    image_size: Sequence[int], patch_size: Sequence[int], step_fraction: float
) -> list[list[int]]:
    """Tile start offsets per axis, evenly spread over the image.

    The first tile starts at 0, the last ends exactly at the image end and consecutive starts are
    at most ``step_fraction * patch`` apart (fewer, larger-overlap tiles are never used: the number
    of tiles is the smallest that respects the step). Every image axis must be at least as large
    as the patch: an axis smaller than it is padded first (:func:`padding_for`).
    """
    if len(image_size) != len(patch_size):
        raise ValueError(
            f"image size {list(image_size)} and patch size {list(patch_size)} differ in rank"
        )
    if not 0.0 < step_fraction <= 1.0:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    steps = []
    for image, patch in zip(image_size, patch_size, strict=True):
        image, patch = int(image), int(patch)
        if patch < 1:
            raise ValueError(f"patch size must be positive, got {list(patch_size)}")
        if image < patch:
            raise ValueError(
                f"image size {list(image_size)} is smaller than patch {list(patch_size)}; pad it first"
            )
        span = image - patch
        target_step = step_fraction * patch
        num_steps = math.ceil(span / target_step) + 1
        if num_steps == 1:
            steps.append([0])
            continue
        actual_step = span / (num_steps - 1)
        steps.append([int(round(actual_step * i)) for i in range(num_steps)])
    return steps


def covering_steps(steps: Sequence[int], patch: int, start: int, stop: int) -> list[int]:
    """The run of ``steps`` whose tiles cover ``[start, stop)``, on the grid ``steps`` defines.

    From the last tile starting at or before ``start`` to the first one ending at or after
    ``stop`` (clamped to the first and last tile). Tiling a box with these tiles instead of
    spreading new ones over the box keeps every tile where a whole-volume pass puts it, so that
    inside the box the two agree wherever the same tiles cover a voxel.
    """
    if not steps or stop <= start:
        raise ValueError(
            f"need steps and a non-empty range, got {list(steps)} and [{start}, {stop})"
        )
    first = max((s for s in steps if s <= start), default=steps[0])
    last = min((s for s in steps if s + patch >= stop), default=steps[-1])
    return [int(s) for s in steps if first <= s <= last]


def gaussian_importance_map(
    patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10.0
) -> np.ndarray:
    """Per-voxel blending weight of a tile: a Gaussian centred on the patch, float32.

    Predictions near a tile's border see less context and are less reliable, so they count less
    where tiles overlap. The map peaks at ``value_scaling_factor`` and has no zeros (the smallest
    values are raised to the smallest positive one) so that every voxel keeps a positive weight.
    The returned array is read-only and shared between calls; copy it before changing it.
    """
    return _gaussian_importance_map(
        tuple(int(p) for p in patch_size), float(sigma_scale), float(value_scaling_factor)
    )


@functools.lru_cache(maxsize=8)
def _gaussian_importance_map(
    patch_size: tuple[int, ...], sigma_scale: float, value_scaling_factor: float
) -> np.ndarray:
    if any(p < 1 for p in patch_size):
        raise ValueError(f"patch size must be positive, got {list(patch_size)}")
    if sigma_scale <= 0 or value_scaling_factor <= 0:
        raise ValueError("sigma_scale and value_scaling_factor must be positive")
    # Separable: the 3D Gaussian is the outer product of one 1D Gaussian per axis, which is exact
    # and avoids filtering a full volume.
    profiles = []
    for size in patch_size:
        sigma = size * sigma_scale
        offsets = np.arange(size, dtype=np.float64) - size // 2
        profiles.append(np.exp(-0.5 * (offsets / sigma) ** 2))
    weights = functools.reduce(np.multiply.outer, profiles)
    weights *= value_scaling_factor / weights.max()
    weights = weights.astype(np.float32)
    positive = weights[weights > 0]
    smallest = positive.min() if positive.size else np.float32(value_scaling_factor)
    np.maximum(weights, smallest, out=weights)
    weights.setflags(write=False)
    return weights


def constant_importance_map(patch_size: Sequence[int]) -> np.ndarray:
    """Uniform blending weight (plain averaging of overlapping tiles), float32, read-only."""
    weights = np.ones(tuple(int(p) for p in patch_size), dtype=np.float32)
    weights.setflags(write=False)
    return weights


def tile_window(corner: Sequence[int], patch_size: Sequence[int]) -> tuple[slice, ...]:
    """The slices of the tile at ``corner`` (its first voxel) of size ``patch_size``."""
    return tuple(slice(c, c + p) for c, p in zip(corner, patch_size, strict=True))


def padding_for(image_size: Sequence[int], patch_size: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) padding per axis that brings every axis up to at least the patch size.

    Padding is split evenly (the odd voxel goes after) so that a small volume sits in the middle
    of the patch, where the importance map is highest.
    """
    if len(image_size) != len(patch_size):
        raise ValueError(
            f"image size {list(image_size)} and patch size {list(patch_size)} differ in rank"
        )
    pads = []
    for image, patch in zip(image_size, patch_size, strict=True):
        missing = max(int(patch) - int(image), 0)
        pads.append((missing // 2, missing - missing // 2))
    return pads


def bounding_box(mask: np.ndarray) -> Region | None:
    """The tightest box holding every True voxel of ``mask``, or None when it has none.

    Example: a mask true at ``[2:5, 3, 7:10]`` -> ``(slice(2, 5), slice(3, 4), slice(7, 10))``.
    """
    if not mask.any():
        return None
    slices = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slices)  # type: ignore[return-value]


def grow_box(box: Region, shape: Sequence[int], margins: Sequence[int]) -> Region:
    """``box`` grown by ``margins`` voxels per side (per axis), clipped to ``shape``.

    Example: ``grow_box((slice(2, 5),) * 3, (6, 6, 6), (1, 3, 0))`` ->
    ``(slice(1, 6), slice(0, 6), slice(2, 5))``.
    """
    out = []
    for sl, n, margin in zip(box, shape, margins, strict=True):
        out.append(slice(max(0, sl.start - margin), min(n, sl.stop + margin)))
    return tuple(out)  # type: ignore[return-value]


__all__ = [
    "Corner",
    "Region",
    "bounding_box",
    "grow_box",
    "compute_steps_for_sliding_window",
    "constant_importance_map",
    "covering_steps",
    "gaussian_importance_map",
    "padding_for",
    "tile_window",
]
