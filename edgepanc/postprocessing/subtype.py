"""The case's subtype read from the tiles that saw the lesion the written mask keeps.

Every tile of a sliding-window pass gives subtype logits; the case's subtype is their mean
weighted by how much kept lesion each tile saw (:func:`kept_lesion_mass`), so that tiles far from
the lesion, and lesions that post-processing removed, do not name it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgepanc.inferers.probabilities import PROBABILITY_SCALE, RegionProbabilities
from edgepanc.inferers.sliding_window import SlidingWindowResult
from edgepanc.inferers.tiling import Corner
from edgepanc.networks.config import LESION_LABEL


def classify_from_tiles(
    result: SlidingWindowResult, labels: np.ndarray, kept: RegionProbabilities
) -> np.ndarray:
    """Subtype probabilities ``[S]``: softmax of the lesion-mass-weighted mean tile logits.

    Tiles that saw more lesion say more about its subtype. The mass is the lesion probability of
    the written mask inside each tile, importance-weighted (:func:`kept_lesion_mass`): ``labels``
    are the post-processed labels and ``kept`` the soft maps limited to them
    (:func:`~edgepanc.postprocessing.labels.mask_region_probabilities`), so a lesion that
    post-processing removed (outside the pancreas, in a dropped organ component) does not name
    the subtype; that weighting beat the lesion each tile predicted on validation and fresh
    phantoms (docs/measurements/cpu_recipe.md). When no voxel is labelled lesion the mass is
    noise, so every tile counts the same.

    Example: ``classify_from_tiles(result, labels, kept).argmax()`` -> ``1`` when the tiles
    holding the kept lesion say subtype 1.
    """
    logits = np.asarray(result.tile_cls_logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"expected tile class logits [T, S] with T > 0, got {list(logits.shape)}")
    if result.importance is None:
        raise ValueError("the sliding-window result does not carry its importance map")
    mass = kept_lesion_mass(kept, result.tiles, result.importance)
    if np.any(labels == LESION_LABEL) and mass.sum() > 0:
        weights = mass / mass.sum()
    else:
        weights = np.full(logits.shape[0], 1.0 / logits.shape[0])
    mean = weights @ logits
    exp = np.exp(mean - mean.max())
    return (exp / exp.sum()).astype(np.float32)


def kept_lesion_mass(
    kept: RegionProbabilities, tiles: Sequence[Corner], importance: np.ndarray
) -> np.ndarray:
    """``[T]``: for each tile (corner in volume coordinates, ``importance``-shaped), the sum over
    its voxels of the importance weight times the lesion probability in ``kept``.

    Example: a tile lying wholly outside ``kept.box`` gets ``0.0``.
    """
    lesion = kept.values[1]
    start = np.array([s.start for s in kept.box])
    stop = np.array([s.stop for s in kept.box])
    patch = np.array(importance.shape)
    mass = np.zeros(len(tiles), dtype=np.float64)
    for i, corner in enumerate(tiles):
        low = np.maximum(np.asarray(corner), start)
        high = np.minimum(np.asarray(corner) + patch, stop)
        if np.any(high <= low):
            continue  # the tile lies outside the box: nothing kept there
        in_box = tuple(slice(a, b) for a, b in zip(low - start, high - start, strict=True))
        in_tile = tuple(slice(a, b) for a, b in zip(low - corner, high - corner, strict=True))
        mass[i] = float(np.tensordot(lesion[in_box], importance[in_tile], axes=3))
    return mass / PROBABILITY_SCALE


__all__ = ["classify_from_tiles", "kept_lesion_mass"]
