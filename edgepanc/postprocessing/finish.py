"""The one finishing step every prediction goes through: clean the labels, then read the subtype.

``edgepanc run``, the unoptimised baseline and validation during training all turn a
sliding-window result into a mask and a subtype here, so the three cannot drift apart: the
labels are post-processed (:func:`~edgepanc.postprocessing.labels.postprocess_labels`), the soft
maps kept for restoring are limited to what the labels keep
(:func:`~edgepanc.postprocessing.labels.mask_region_probabilities`), the subtype is read from
the tiles weighted by that kept lesion (:func:`~edgepanc.postprocessing.subtype.classify_from_tiles`),
and the lesion is grown by the model's margin for that subtype
(:mod:`~edgepanc.postprocessing.lesion_margin`; none for a model without margins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepanc.inferers.probabilities import RegionProbabilities
from edgepanc.inferers.sliding_window import SlidingWindowResult
from edgepanc.postprocessing.labels import (
    DEFAULT_POSTPROCESS,
    PostprocessConfig,
    mask_region_probabilities,
    postprocess_labels,
)
from edgepanc.postprocessing.lesion_margin import (
    grow_lesion,
    margin_for,
    raise_lesion_probability,
)
from edgepanc.postprocessing.subtype import classify_from_tiles


@dataclass(frozen=True)
class FinishedPrediction:
    """A finished prediction on the network's (preprocessed) grid.

    ``labels``: the post-processed uint8 label map; ``region_probabilities``: the soft maps that
    restore it onto the input grid, zeroed beyond what ``labels`` keeps; ``subtype_probabilities``:
    ``[S]`` float32, summing to 1; ``lesion_margin_mm``: how far the lesion was grown into the
    gland (the model's margin for the subtype read; 0: not grown).

    Example: ``finish_prediction(result, spacing).subtype`` -> ``2``.
    """

    labels: np.ndarray
    region_probabilities: RegionProbabilities
    subtype_probabilities: np.ndarray
    lesion_margin_mm: float = 0.0

    @property
    def subtype(self) -> int:
        """The most probable subtype."""
        return int(np.argmax(self.subtype_probabilities))


def finish_prediction(
    result: SlidingWindowResult,
    spacing_zyx: Sequence[float],
    postprocess: PostprocessConfig | None = DEFAULT_POSTPROCESS,
    lesion_margins_mm: Sequence[float] = (),
) -> FinishedPrediction:
    """Post-process ``result``'s labels, limit its soft maps to them, read the subtype and grow
    the lesion by ``lesion_margins_mm[subtype]`` (the bundle's; empty: no margin).

    ``result`` must carry its soft maps (an inferer called with ``keep_probabilities=True``).
    ``postprocess`` None keeps the network's labels as they are (validation of the raw output).
    The subtype is read before the lesion grows, so the margin never changes it.

    Example: ``finish_prediction(sliding_window_inference(volume, predictor, (64, 96, 96),
    keep_probabilities=True), (2.0, 1.2, 1.2)).labels`` -> the cleaned uint8 label map.
    """
    if result.probabilities is None:
        raise ValueError("finishing needs the soft maps: infer with keep_probabilities=True")
    labels = result.labels
    if postprocess is not None:
        labels = postprocess_labels(labels, spacing_zyx, postprocess)
    kept = mask_region_probabilities(result.probabilities, labels)
    subtype_probabilities = classify_from_tiles(result, labels, kept)
    margin = margin_for(lesion_margins_mm, int(np.argmax(subtype_probabilities)))
    if margin > 0:
        grown = grow_lesion(labels, spacing_zyx, margin)
        raised = raise_lesion_probability(result.probabilities, grown != labels)
        labels, kept = grown, mask_region_probabilities(raised, grown)
    return FinishedPrediction(labels, kept, subtype_probabilities, max(margin, 0.0))


__all__ = ["FinishedPrediction", "finish_prediction"]
