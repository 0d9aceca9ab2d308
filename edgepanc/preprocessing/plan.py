"""The preprocessing plan: target spacing, CT intensity window and patch size, fitted on data.

Like nnU-Net's plans, the target spacing is the median spacing of the training cases and the
intensity statistics come from foreground (label > 0) voxels sampled across them. The plan is
stored in the model bundle (``model.json`` "preprocessing") through :meth:`PreprocessingPlan.to_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

    ``target_spacing`` (z, y, x) overrides the median spacing. The sampling is seeded, so the same
    cases give the same plan.
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
