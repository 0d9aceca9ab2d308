"""CT intensity normalisation: clip to foreground percentiles, then z-score (nnU-Net's CT scheme).

Hounsfield units are absolute, so one set of statistics from the training foreground serves every
scan: clipping at the 0.5 and 99.5 percentiles drops bone and air extremes that say nothing
about the pancreas, and the z-score puts soft tissue near zero for the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


class IntensityParameters(Protocol):
    clip_low: float
    clip_high: float
    mean: float
    std: float


@dataclass(frozen=True)
class IntensityStatistics:
    """Clip window and the mean and standard deviation inside it."""

    clip_low: float
    clip_high: float
    mean: float
    std: float


def ct_intensity_statistics(foreground: np.ndarray) -> IntensityStatistics:
    """Percentile clip window and the mean/std after clipping, from foreground samples."""
    values = np.asarray(foreground, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no foreground intensities to compute statistics from")
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    clipped = np.clip(values, low, high)
    return IntensityStatistics(float(low), float(high), float(clipped.mean()), float(clipped.std()))


def normalize_ct(
    array: np.ndarray, params: IntensityParameters, in_place: bool = False
) -> np.ndarray:
    """Clip ``array`` to the plan's window and z-score it; returns a new float32 array, or
    ``array`` itself with ``in_place`` (a writable float32 array the caller owns: no copy).

    Example: ``normalize_ct(np.array([-1000.0, 40.0]), plan)`` -> ``[-5.9, -1.38]`` for a
    -133..165 HU window, mean 92.9, standard deviation 38.3.
    """
    if in_place:
        if array.dtype != np.float32 or not array.flags.writeable:
            raise ValueError("in-place normalisation needs a writable float32 array")
        out = np.clip(array, params.clip_low, params.clip_high, out=array)
    else:
        out = np.clip(np.asarray(array, dtype=np.float32), params.clip_low, params.clip_high)
    out -= np.float32(params.mean)
    out /= np.float32(max(params.std, 1e-8))  # a constant foreground must not divide by zero
    return out
