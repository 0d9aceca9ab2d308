"""The preprocessing plan: target spacing, CT intensity window and patch size, fitted on data.

Like nnU-Net's plans, the target spacing is the median spacing of the training cases and the
intensity statistics come from foreground (label > 0) voxels sampled across them. The plan is
stored in the model bundle (``model.json`` "preprocessing") through :meth:`PreprocessingPlan.to_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from edgepanc.data.cases import Case
from edgepanc.errors import DatasetError
from edgepanc.io.volume import inspect_image, read_image, read_label
from edgepanc.preprocessing.normalization import ct_intensity_statistics
from edgepanc.preprocessing.orientation import canonical_spacing

FOREGROUND_SAMPLES_PER_CASE = 10_000
# An out-of-plane spacing more than this many times the in-plane one counts as anisotropic.
ANISOTROPY_RATIO = 3.0


@dataclass(frozen=True)
class PreprocessingPlan:
    """How every scan is prepared for the network. Spacing and patch size are (z, y, x)."""

    target_spacing: tuple[float, float, float]
    clip_low: float
    clip_high: float
    mean: float
    std: float
    patch_size: tuple[int, int, int]

    def __post_init__(self) -> None:
        # Accept lists (from JSON) but store tuples so the plan stays hashable and comparable.
        object.__setattr__(self, "target_spacing", tuple(float(s) for s in self.target_spacing))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ValueError(f"target_spacing must be 3 positive values, got {self.target_spacing}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(f"patch_size must be 3 positive integers, got {self.patch_size}")
        if not self.clip_low <= self.clip_high:
            raise ValueError(f"clip_low {self.clip_low} is above clip_high {self.clip_high}")
        if not self.std >= 0:
            raise ValueError(f"std must be non-negative, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingPlan:
        names = {f.name for f in fields(cls)}
        missing, unknown = names - data.keys(), data.keys() - names
        if missing or unknown:
            raise ValueError(
                f"preprocessing plan: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
            )
        return cls(**data)


def median_spacing(spacings_zyx: Iterable[Sequence[float]]) -> tuple[float, float, float]:
    """Per-axis median of (z, y, x) spacings."""
    values = np.asarray(list(spacings_zyx), dtype=float)
    return tuple(float(v) for v in np.median(values, axis=0))  # type: ignore[return-value]


def target_spacing_for(spacings_zyx: Iterable[Sequence[float]]) -> tuple[float, float, float]:
    """The target spacing of a data set: the per-axis median, except that an out-of-plane axis
    more than :data:`ANISOTROPY_RATIO` times coarser than the in-plane axes takes its 10th
    percentile (nnU-Net's rule: resampling every scan to the median of very thick slices would
    blur the thin-slice scans along z for nothing).

    Example::

        >>> target_spacing_for([(5.0, 0.8, 0.8), (5.0, 0.8, 0.8), (1.0, 0.8, 0.8)])
        (1.8, 0.8, 0.8)
    """
    values = np.asarray(list(spacings_zyx), dtype=float)
    median = np.median(values, axis=0)
    if median[0] > ANISOTROPY_RATIO * max(median[1], median[2]):
        median[0] = np.percentile(values[:, 0], 10)
    return tuple(round(float(v), 6) for v in median)  # type: ignore[return-value]


def median_shape_at(
    shapes_zyx: Iterable[Sequence[int]],
    spacings_zyx: Iterable[Sequence[float]],
    target_spacing: Sequence[float],
) -> tuple[int, int, int]:
    """The per-axis median of the scans' shapes once resampled to ``target_spacing``.

    Example: ``median_shape_at([(40, 100, 100)], [(2.5, 1.0, 1.0)], (2.0, 1.25, 1.25))`` ->
    ``(50, 80, 80)``.
    """
    shapes = np.asarray(list(shapes_zyx), dtype=float)
    spacings = np.asarray(list(spacings_zyx), dtype=float)
    resampled = shapes * spacings / np.asarray(target_spacing, dtype=float)
    return tuple(int(round(v)) for v in np.median(resampled, axis=0))  # type: ignore[return-value]


@dataclass(frozen=True)
class StepShape:
    """The patch, batch and network depth of a training step, and what a step costs.

    ``cost`` is in the unit of the device's limit: bytes of GPU memory or seconds of CPU time.
    Example: ``StepShape((64, 128, 128), 2, 6, 2.9e9, 8e9)``.
    """

    patch_size: tuple[int, int, int]
    batch_size: int
    stages: int
    cost: float
    limit: float


def pooling_stages(patch: Sequence[int], max_stages: int, min_feature_map: int = 4) -> int:
    """Stages of a UNet for ``patch``: halve every axis until the smallest one reaches
    ``min_feature_map`` voxels (nnU-Net's rule), at most ``max_stages`` stages.

    Example: ``pooling_stages((32, 64, 64), max_stages=6)`` -> ``4`` (32 -> 16 -> 8 -> 4).
    """
    pools = int(np.floor(np.log2(max(min(patch), 1) / min_feature_map))) if patch else 0
    return int(min(max_stages, max(2, pools + 1)))


def fit_step_shape(
    median_shape: Sequence[int],
    cost: Callable[[tuple[int, int, int], int, int], float],
    limit: float,
    max_stages: int,
    min_patch: int = 32,
    max_batch: int = 16,
    max_batch_voxels: float = math.inf,
    stages: int | None = None,
    patch: Sequence[int] | None = None,
) -> StepShape:
    """The largest patch that fits ``limit`` with a batch of two, then the largest batch.

    The patch starts at the median scan shape (rounded up to a multiple of the network's
    divisor) and loses one divisor from its largest axis relative to the median shape until a
    step of two patches costs at most ``limit`` (``cost(patch, batch, stages)``: bytes or
    seconds) or every axis is at ``min_patch``; the network's depth follows the patch
    (:func:`pooling_stages`) unless ``stages`` fixes it. The batch then grows while the step
    fits and the batch holds at most ``max_batch_voxels`` voxels (nnU-Net: a few percent of the
    data set's voxels). A given ``patch`` is kept as it is (only the batch is fitted).

    Example::

        >>> fit_step_shape((60, 200, 200), lambda p, b, s: 1000.0 * b * math.prod(p), 8e9, 6)
        StepShape(patch_size=(64, 208, 208), batch_size=2, stages=5, ...)
    """
    median = np.maximum(np.asarray(median_shape, dtype=float), 1.0)

    def depth(candidate: Sequence[int]) -> int:
        return stages if stages is not None else pooling_stages(candidate, max_stages)

    if patch is not None:
        shape = tuple(int(v) for v in patch)
        return _fit_batch(shape, depth(shape), cost, limit, max_batch, max_batch_voxels)

    def rounded(candidate: list[int]) -> list[int]:
        """Each axis a multiple of the divisor of the depth this patch gets (until stable)."""
        while True:
            step = 2 ** (depth(candidate) - 1)
            new = [max(min_patch, int(math.ceil(v / step) * step)) for v in candidate]
            if new == candidate:
                return new
            candidate = new

    sizes = rounded([max(min_patch, int(v)) for v in median])
    while True:
        step = 2 ** (depth(sizes) - 1)
        if cost(tuple(sizes), 2, depth(sizes)) <= limit:  # type: ignore[arg-type]
            break
        shrinkable = [axis for axis in range(3) if sizes[axis] - step >= min_patch]
        if not shrinkable:
            break  # the smallest patch allowed: the limit is what it is
        axis = max(shrinkable, key=lambda a: (sizes[a] / median[a], sizes[a]))
        sizes[axis] -= step
        sizes = rounded(sizes)
    shape = tuple(sizes)
    return _fit_batch(shape, depth(shape), cost, limit, max_batch, max_batch_voxels)


def _fit_batch(
    shape: tuple[int, ...],
    stages: int,
    cost: Callable[[tuple[int, int, int], int, int], float],
    limit: float,
    max_batch: int,
    max_batch_voxels: float,
) -> StepShape:
    """The largest batch (two at least) of ``shape`` patches within ``limit`` and the voxel cap."""
    batch = 2
    while (
        batch < max_batch
        and cost(shape, batch + 1, stages) <= limit  # type: ignore[arg-type]
        and (batch + 1) * math.prod(shape) <= max_batch_voxels
    ):
        batch += 1
    return StepShape(shape, batch, stages, cost(shape, batch, stages), limit)  # type: ignore[arg-type]


def sample_foreground(
    image: np.ndarray, label: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``count`` intensities of voxels with label > 0, drawn without replacement."""
    values = image[label > 0]
    if values.size <= count:
        return values.astype(np.float64)
    return rng.choice(values, size=count, replace=False).astype(np.float64)


def _training_cases(cases: Iterable[Case]) -> list[Case]:
    chosen = [c for c in cases if c.split == "train" and c.label is not None]
    if not chosen:
        raise DatasetError(Path("<cases>"), "no labelled training cases to plan preprocessing from")
    return chosen


def plan_from_cases(
    cases: Iterable[Case],
    patch_size: Sequence[int],
    target_spacing: Sequence[float] | None = None,
    samples_per_case: int = FOREGROUND_SAMPLES_PER_CASE,
    seed: int = 0,
) -> PreprocessingPlan:
    """Fit a plan on the labelled training cases (split "train").

    ``target_spacing`` (z, y, x) overrides the median spacing (the training planner passes
    :func:`target_spacing_for`'s, which corrects the median for thick slices). The sampling is
    seeded, so the same cases give the same plan.

    Example: ``plan_from_cases(discover_cases(Path("data")), (32, 64, 64)).target_spacing``.
    """
    training = _training_cases(cases)
    if target_spacing is None:
        infos = [inspect_image(c.image) for c in training]
        target_spacing = median_spacing(canonical_spacing(i.spacing, i.direction) for i in infos)
    rng = np.random.default_rng(seed)
    samples = []
    for case in training:
        # Keep the images bound: an array view must not outlive the image that owns its buffer.
        image, label = read_image(case.image), read_label(case.label)  # type: ignore[arg-type]
        samples.append(
            sample_foreground(
                sitk.GetArrayViewFromImage(image),
                sitk.GetArrayViewFromImage(label),
                samples_per_case,
                rng,
            )
        )
    foreground = np.concatenate(samples)
    if foreground.size == 0:
        raise DatasetError(Path("<cases>"), "training masks hold no foreground voxels")
    stats = ct_intensity_statistics(foreground)
    return PreprocessingPlan(
        target_spacing=tuple(target_spacing),  # type: ignore[arg-type]
        clip_low=stats.clip_low,
        clip_high=stats.clip_high,
        mean=stats.mean,
        std=stats.std,
        patch_size=tuple(patch_size),  # type: ignore[arg-type]
    )
