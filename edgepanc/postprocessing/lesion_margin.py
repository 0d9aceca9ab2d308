"""A lesion margin: the predicted lesion grown into the gland by a distance set per subtype.

Some lesions are labelled wider than the network segments them. On the phantoms the subtype-2
lesion's bright ring (a third to a half of its volume) attenuates like the gland beside it, and
the network labels it pancreas while it finds the core (docs/measurements/tversky_and_rims.md);
raising the lesion probability did not bring the ring back, because its probability is low, not
borderline (docs/measurements/data_set_size.md). What the ring has is a known width, so the
finishing step can grow the lesion by a margin, in millimetres, within the predicted organ. The
margin of each subtype is a property of the model and its data: ``edgepanc train`` measures it on
the cases that choose the model (:mod:`edgepanc.training.lesion_margins`) and the bundle keeps it
(``lesion_margins_mm``); a subtype whose lesions the network already segments to their edge gets
0, which changes nothing.

Example: ``grow_lesion(labels, (2.0, 1.2, 1.2), 2.5)`` -> the labels with every pancreas voxel
within 2.5 mm of the lesion made lesion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from edgepanc.inferers.probabilities import PROBABILITY_SCALE, RegionProbabilities
from edgepanc.inferers.tiling import bounding_box, grow_box
from edgepanc.networks.config import LESION_LABEL as LESION
from edgepanc.networks.config import PANCREAS_LABEL as PANCREAS

# The margins training tries, in mm: 0 (none) up to about the width of the widest lesion rim
# the reference labels include (3.2 mm on the phantoms), a little beyond.
MARGIN_CANDIDATES_MM = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def grow_lesion(labels: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> np.ndarray:
    """Make every pancreas voxel within ``margin_mm`` (Euclidean, in mm) of a lesion voxel
    lesion; background stays background, so the organ's outline does not move. A new array.

    The distance transform runs on the lesion's bounding box grown by the margin, not the whole
    grid.

    Example: a 3-voxel lesion inside a gland at 1 mm spacing, ``margin_mm=1.0`` -> its six face
    neighbours become lesion too, its diagonal neighbours (1.41 mm) do not.
    """
    lesion = labels == LESION
    if margin_mm <= 0 or not lesion.any():
        return labels.copy()
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    reach = tuple(int(np.ceil(margin_mm / s)) + 1 for s in spacing)
    box = bounding_box(lesion)
    assert box is not None, "the lesion has voxels"
    box = grow_box(box, labels.shape, reach)
    near = ndimage.distance_transform_edt(~lesion[box], sampling=spacing) <= margin_mm
    out = labels.copy()
    window = out[box]
    window[near & (window == PANCREAS)] = LESION
    return out


def raise_lesion_probability(
    probabilities: RegionProbabilities, grown: np.ndarray
) -> RegionProbabilities:
    """The soft maps with the lesion map set to certainty where ``grown`` (a boolean mask of the
    whole volume) is true, so that restoring onto the input grid keeps the grown voxels. A new
    object.

    Example: ``raise_lesion_probability(result.probabilities, new_lesion_voxels)``.
    """
    values = probabilities.values.copy()
    lesion_map = values[LESION - 1]
    lesion_map[grown[probabilities.box]] = PROBABILITY_SCALE
    return RegionProbabilities(values, probabilities.box)


def margin_for(margins_mm: Sequence[float], subtype: int) -> float:
    """The margin of ``subtype``; 0 when the model has none (``margins_mm`` empty).

    Example: ``margin_for((0.0, 0.0, 2.5), 2)`` -> ``2.5``; ``margin_for((), 2)`` -> ``0.0``.
    """
    return float(margins_mm[subtype]) if 0 <= subtype < len(margins_mm) else 0.0


__all__ = ["MARGIN_CANDIDATES_MM", "grow_lesion", "margin_for", "raise_lesion_probability"]
