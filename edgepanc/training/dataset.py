"""Preprocessed-case cache: every case is read, reoriented, resampled and normalised once per run.

Arrays live in memory (a quiz-size case at the CPU preset's spacing is well under a megabyte, the
whole data set a few hundred MB at most); epochs never re-resample. Each case also keeps the
voxel coordinates of its pancreas and lesion for foreground oversampling, and the grid record
that maps predictions back onto the original image for validation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

# Enough centres to cover any pancreas; subsampling keeps memory flat for big masks.
MAX_CENTRES = 20000


@dataclass
class PreparedCase:
    """One case on the target grid: image float32, label uint8, both (z, y, x)."""

    case_id: str
    subtype: int | None
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    grid: Any  # edgepanc.preprocessing GridRecord: inverse mapping to the original image
    label_path: str | None
    lesion_coords: np.ndarray  # [N, 3] int32 voxel indices of label 2
    foreground_coords: np.ndarray  # [N, 3] int32 voxel indices of labels 1 and 2
    background: float  # the image value of air after normalisation, used to pad patches


def sample_coordinates(mask: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` voxel indices [N, 3] of ``mask``, a fixed random subset if there are more."""
    coords = np.argwhere(mask).astype(np.int32)
    if len(coords) > limit:
        keep = np.random.default_rng(seed).choice(len(coords), size=limit, replace=False)
        coords = coords[np.sort(keep)]
    return coords


def prepare_case(case: Any, plan: Any) -> PreparedCase:
    """Read and preprocess one :class:`edgepanc.data.cases.Case` with ``plan``."""
    from edgepanc.io.volume import read_image, read_label
    from edgepanc.preprocessing import preprocess_image, preprocess_label

    image, grid = preprocess_image(read_image(case.image), plan)
    if case.label is not None:
        label = preprocess_label(read_label(case.label), grid)
    else:
        label = np.zeros(image.shape, dtype=np.uint8)
    return PreparedCase(
        case_id=case.case_id,
        subtype=case.subtype,
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=np.ascontiguousarray(label, dtype=np.uint8),
        spacing=tuple(float(s) for s in plan.target_spacing),
        grid=grid,
        label_path=None if case.label is None else str(case.label),
        lesion_coords=sample_coordinates(label == 2, MAX_CENTRES),
        foreground_coords=sample_coordinates(label > 0, MAX_CENTRES),
        background=float(image.min()),
    )


def prepare_cases(
    cases: Sequence[Any], plan: Any, desc: str = "preprocessing"
) -> list[PreparedCase]:
    """Preprocess ``cases`` in order, with a progress bar."""
    bar = tqdm(cases, desc=desc, unit="case", leave=False, disable=not cases)
    return [prepare_case(case, plan) for case in bar]
