"""Preprocessing: canonical orientation, resampling, CT normalisation, the plan, and the inverse."""

from edgepanc.preprocessing.normalization import (
    IntensityStatistics,
    ct_intensity_statistics,
    normalize_ct,
)
from edgepanc.preprocessing.orientation import (
    CANONICAL_ORIENTATION,
    canonical_array_in_original_order,
    canonical_geometry,
    canonical_spacing,
    from_canonical,
    orientation_of,
    to_canonical,
)
from edgepanc.preprocessing.pipeline import (
    Geometry,
    GridRecord,
    preprocess_image,
    preprocess_label,
    resample_for_network,
    restore_label,
    restored_box,
)
from edgepanc.preprocessing.plan import PreprocessingPlan, median_spacing, plan_from_cases
from edgepanc.preprocessing.resampling import resample_onto, resample_to_spacing

__all__ = [
    "CANONICAL_ORIENTATION",
    "canonical_array_in_original_order",
    "Geometry",
    "GridRecord",
    "IntensityStatistics",
    "PreprocessingPlan",
    "canonical_geometry",
    "canonical_spacing",
    "ct_intensity_statistics",
    "from_canonical",
    "median_spacing",
    "normalize_ct",
    "orientation_of",
    "plan_from_cases",
    "preprocess_image",
    "preprocess_label",
    "resample_for_network",
    "resample_onto",
    "resample_to_spacing",
    "restore_label",
    "restored_box",
    "to_canonical",
]
