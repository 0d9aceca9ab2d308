"""What follows inference: label clean-up, the subtype read-out, and the finishing step that
runs both the same way for ``edgepanc run``, the baseline and validation."""

from edgepanc.postprocessing.finish import FinishedPrediction, finish_prediction
from edgepanc.postprocessing.labels import (
    DEFAULT_POSTPROCESS,
    PostprocessConfig,
    keep_main_components,
    mask_region_probabilities,
    postprocess_labels,
    voxel_volume_ml,
)
from edgepanc.postprocessing.subtype import classify_from_tiles, kept_lesion_mass

__all__ = [
    "DEFAULT_POSTPROCESS",
    "FinishedPrediction",
    "PostprocessConfig",
    "classify_from_tiles",
    "finish_prediction",
    "keep_main_components",
    "kept_lesion_mass",
    "mask_region_probabilities",
    "postprocess_labels",
    "voxel_volume_ml",
]
