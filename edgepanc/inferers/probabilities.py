"""Soft region maps kept beside the labels, so that restoring to the input grid can interpolate.

Mapping labels from the network's grid back onto a finer input grid by interpolating hard 0/1
masks puts every boundary half-way between two coarse voxels. Interpolating the probabilities
instead (what nnU-Net does before its argmax) lets a boundary fall where the network's belief
crosses one half. Only the two nested regions the output needs are kept, as bytes:
``P(label >= 1)`` (the whole pancreas, ``1 - P(background)``) and ``P(label == 2)`` (the
lesion), each ``round(255 * p)``, so two bytes per voxel of the tiled box instead of twelve for
three float32 logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepanc.inferers.tiling import Region

BACKGROUND_LABEL = 0
LESION_LABEL = 2
PROBABILITY_SCALE = 255  # uint8 steps: 1/255 is finer than any interpolation weight that matters


@dataclass(frozen=True)
class RegionProbabilities:
    """``values`` uint8 ``[2, z, y, x]``: P(label >= 1) and P(label == 2) times 255 over ``box``
    (slices of the volume); zero everywhere outside it."""

    values: np.ndarray
    box: Region

    def __post_init__(self) -> None:
        shape = tuple(s.stop - s.start for s in self.box)
        if self.values.dtype != np.uint8 or self.values.shape != (2, *shape):
            raise ValueError(
                f"region probabilities must be uint8 [2, {', '.join(map(str, shape))}], "
                f"got {self.values.dtype} {list(self.values.shape)}"
            )


def region_probability_bytes(
    weighted_logits: np.ndarray, weight_sum: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """uint8 ``[2, ...]`` region probabilities from importance-weighted logit sums ``[C, ...]``.

    ``weight_sum`` (the per-voxel sum of the importance weights, broadcastable to one class) turns
    the sums back into blended logits before the softmax. ``out`` receives the result when given.
    """
    if weighted_logits.ndim < 1 or weighted_logits.shape[0] <= LESION_LABEL:
        raise ValueError(
            f"expected logits [C, ...] with C > {LESION_LABEL}, got {list(weighted_logits.shape)}"
        )
    logits = weighted_logits / np.maximum(weight_sum, np.finfo(np.float32).tiny)
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    total = logits.sum(axis=0)
    result = np.empty((2, *total.shape), dtype=np.uint8) if out is None else out
    scale = np.float32(PROBABILITY_SCALE) / total
    # P(label >= 1) = 1 - P(background); the lesion is the one label nested inside it.
    np.rint((total - logits[BACKGROUND_LABEL]) * scale, out=total)
    result[0] = total
    np.rint(logits[LESION_LABEL] * scale, out=total)
    result[1] = total
    return result


__all__ = [
    "PROBABILITY_SCALE",
    "RegionProbabilities",
    "region_probability_bytes",
]
