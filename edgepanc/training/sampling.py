"""Patch sampling: class-balanced case choice, foreground oversampling, on-the-fly augmentation.

Case choice: each case is drawn with probability proportional to 1 / (cases of its subtype), so
every subtype is seen equally often (the data set is 62/106/84); the subtype loss is therefore
unweighted. With ``lesion_size_exponent`` > 0 the cases of a subtype share its mass in proportion
to (lesion diameter)^-exponent, so small lesions, the ones the segmentation misses, are drawn
more often without changing how often each subtype is seen.

Patch centre: a share ``lesion_fraction`` (default 0.6) of patches is centred on a lesion voxel,
``pancreas_fraction`` (0.25) on a pancreas voxel, the rest anywhere in the volume; centres get a
jitter of up to a quarter patch. Lesion-centred patches dominate because the subtype is a
case-level label about the lesion and lesions are small; the pancreas and random shares keep the
segmentation calibrated on the rest of the volume.

The (augmented) patch is interpolated straight out of the case volume at the patch's own
coordinates, which costs about as much as the patch, not the volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from edgepanc.training.augmentation import (
    AugmentationConfig,
    augment_intensity,
    random_displacement_mm,
    random_spatial_matrix,
)
from edgepanc.training.dataset import PreparedCase
from edgepanc.training.losses import LESION_LABEL


@dataclass(frozen=True)
class SamplingConfig:
    patch_size: tuple[int, int, int]
    lesion_fraction: float = 0.6
    pancreas_fraction: float = 0.25
    lesion_size_exponent: float = 0.0  # 0: every case of a subtype alike


def balanced_case_weights(subtypes: Sequence[int | None]) -> np.ndarray:
    """Probability per case, equal total mass per subtype (unknown subtype counts as its own)."""
    keys = [-1 if s is None else int(s) for s in subtypes]
    counts = {k: keys.count(k) for k in set(keys)}
    weights = np.array([1.0 / counts[k] for k in keys])
    return weights / weights.sum()


def lesion_diameters_mm(cases: Sequence[PreparedCase]) -> np.ndarray:
    """Each case's lesion as the diameter (mm) of a sphere of its volume; NaN where none.

    Example: a case with 523 lesion voxels of 1 mm^3 -> ``array([10.0])`` (to 0.1 mm).
    """
    diameters = []
    for case in cases:
        volume = np.count_nonzero(case.label == LESION_LABEL) * float(np.prod(case.spacing))
        diameters.append((6.0 * volume / np.pi) ** (1.0 / 3.0) if volume > 0 else np.nan)
    return np.array(diameters)


def size_balanced_case_weights(
    subtypes: Sequence[int | None], diameters_mm: Sequence[float], exponent: float
) -> np.ndarray:
    """:func:`balanced_case_weights`, with each subtype's mass shared among its cases in
    proportion to ``diameter ** -exponent`` (cases without a lesion count as the subtype's median).

    Example: one subtype, lesions of 5 and 20 mm, ``exponent=1`` -> ``array([0.8, 0.2])``.
    """
    weights = balanced_case_weights(subtypes)
    if exponent <= 0:
        return weights
    keys = np.array([-1 if s is None else int(s) for s in subtypes])
    diameters = np.asarray(diameters_mm, dtype=np.float64)
    for key in np.unique(keys):
        members = keys == key
        size = diameters[members]
        known = np.isfinite(size)
        fill = float(np.median(size[known])) if known.any() else 1.0
        share = np.where(known, size, fill) ** -exponent
        weights[members] = weights[members].sum() * share / share.sum()
    return weights


def choose_centre(
    case: PreparedCase,
    rng: np.random.Generator,
    config: SamplingConfig,
) -> np.ndarray:
    """A patch centre in voxel coordinates (z, y, x), float."""
    draw = rng.random()
    coords = None
    if draw < config.lesion_fraction and len(case.lesion_coords):
        coords = case.lesion_coords
    elif draw < config.lesion_fraction + config.pancreas_fraction and len(case.foreground_coords):
        coords = case.foreground_coords
    elif draw < config.lesion_fraction and len(case.foreground_coords):
        coords = case.foreground_coords  # no lesion in this case: fall back to the pancreas
    if coords is None:
        return np.array([rng.uniform(0, s - 1) for s in case.image.shape])
    centre = coords[int(rng.integers(len(coords)))].astype(np.float64)
    jitter = np.array(config.patch_size) / 4.0
    return centre + rng.uniform(-jitter, jitter)


def patch_coordinates(
    centre: np.ndarray,
    patch_size: Sequence[int],
    spacing: Sequence[float],
    matrix: np.ndarray,
    displacement_mm: np.ndarray | None = None,
) -> np.ndarray:
    """Voxel coordinates [3, D, H, W] of a patch whose mm offsets are mapped by ``matrix``, then
    moved by ``displacement_mm`` ([3, D, H, W], volume axes) where given."""
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    axes = [np.arange(n, dtype=np.float64) - (n - 1) / 2.0 for n in patch_size]
    grid = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    offsets_mm = matrix @ (grid * spacing_arr[:, None])
    if displacement_mm is not None:
        offsets_mm += displacement_mm.reshape(3, -1)
    coords = offsets_mm / spacing_arr[:, None] + centre[:, None]
    return coords.reshape(3, *patch_size)


def extract_patch(
    case: PreparedCase,
    centre: np.ndarray,
    patch_size: Sequence[int],
    matrix: np.ndarray,
    displacement_mm: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image (linear) and label (nearest) patches; outside the volume: background."""
    if displacement_mm is None and np.allclose(matrix, np.eye(3)):
        return _crop(case, centre, patch_size)
    coords = patch_coordinates(centre, patch_size, case.spacing, matrix, displacement_mm)
    image = ndimage.map_coordinates(
        case.image, coords, order=1, mode="constant", cval=case.background, prefilter=False
    ).astype(np.float32, copy=False)
    label = ndimage.map_coordinates(case.label, coords, order=0, mode="constant", cval=0)
    return image, label.astype(np.uint8, copy=False)


def _crop(
    case: PreparedCase, centre: np.ndarray, patch_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    # The unaugmented patch is a plain crop with padding: exact and much faster.
    start = np.round(centre - (np.asarray(patch_size) - 1) / 2.0).astype(int)
    image = np.full(patch_size, case.background, dtype=np.float32)
    label = np.zeros(patch_size, dtype=np.uint8)
    src, dst = [], []
    for begin, size, extent in zip(start, patch_size, case.image.shape, strict=True):
        lo, hi = max(begin, 0), min(begin + size, extent)
        if hi <= lo:
            return image, label
        src.append(slice(lo, hi))
        dst.append(slice(lo - begin, hi - begin))
    image[tuple(dst)] = case.image[tuple(src)]
    label[tuple(dst)] = case.label[tuple(src)]
    return image, label


class PatchSampler:
    """Draws augmented training batches from prepared cases with its own numpy Generator.

    The generator is re-seeded from ``(seed, epoch, rank)`` at the start of each epoch
    (:meth:`start_epoch`), so an epoch's batches do not depend on what ran before it: resuming
    from a checkpoint replays the same batches as an uninterrupted run.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        sampling: SamplingConfig,
        augmentation: AugmentationConfig,
        seed: int = 0,
        rank: int = 0,
        keep_clean_image: bool = False,
    ) -> None:
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        self.cases = list(cases)
        self.sampling = sampling
        self.augmentation = augmentation
        self.seed = seed
        self.rank = rank
        # Also hand out each patch before its intensity augmentation (``clean_image``): the
        # subtype head's attenuation statistics can then be computed on calibrated HU while the
        # segmentation still learns from augmented intensities (TrainConfig.head_statistics).
        self.keep_clean_image = keep_clean_image
        self.case_weights = size_balanced_case_weights(
            [c.subtype for c in self.cases],
            lesion_diameters_mm(self.cases),
            sampling.lesion_size_exponent,
        )
        self.rng = np.random.default_rng([seed, 0, rank])

    def start_epoch(self, epoch: int, worker: int = 0) -> None:
        self.rng = np.random.default_rng([self.seed, epoch, self.rank, worker])

    def sample(self) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        """One patch: augmented image [D, H, W] float32, label [D, H, W] uint8, subtype, and the
        image before intensity augmentation (same spatial transform)."""
        case = self.cases[int(self.rng.choice(len(self.cases), p=self.case_weights))]
        centre = choose_centre(case, self.rng, self.sampling)
        matrix = random_spatial_matrix(self.rng, self.augmentation)
        displacement = random_displacement_mm(
            self.rng, self.augmentation, self.sampling.patch_size, case.spacing
        )
        clean, label = extract_patch(case, centre, self.sampling.patch_size, matrix, displacement)
        image = augment_intensity(clean, self.rng, self.augmentation)
        return image, label, -100 if case.subtype is None else int(case.subtype), clean

    def sample_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """``image`` [B, 1, D, H, W] float32, ``label`` [B, D, H, W] int64, ``subtype`` [B];
        with ``keep_clean_image`` also ``clean_image`` [B, 1, D, H, W]."""
        patches = [self.sample() for _ in range(batch_size)]
        batch = {
            "image": np.stack([p[0] for p in patches])[:, None],
            "label": np.stack([p[1] for p in patches]).astype(np.int64),
            "subtype": np.array([p[2] for p in patches], dtype=np.int64),
        }
        if self.keep_clean_image:
            batch["clean_image"] = np.stack([p[3] for p in patches])[:, None]
        return batch
