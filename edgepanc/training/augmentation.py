"""Patch augmentation, drawn per patch from a numpy Generator.

The spatial part (flips, 90-degree and small rotations, scaling including a 2x zoom-out) is one
affine map in millimetres; :mod:`edgepanc.training.sampling` applies it by interpolating only the patch's own
coordinates out of the case volume (``scipy.ndimage.map_coordinates``), so no transformed copy of
the volume is ever made and anisotropic voxels rotate correctly. The zoom-out lets the same
network serve the runtime's coarse pass at twice the target spacing.

Two options are off unless a recipe sets their probability (their draws are skipped then, so a
run without them replays the same patches as before they existed): an elastic deformation, a
smooth random displacement (mm) added to the same patch coordinates
(:func:`random_displacement_mm`), and low-resolution simulation, the patch taken down to a
coarser grid and back (:func:`simulate_low_resolution`), as a thicker-slice or softer-kernel scan
would show it.

The intensity part (scale, shift, gamma, Gaussian noise, Gaussian blur) runs on the patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges; intensities are in normalised units (z-scored CT)."""

    flip_probability: float = 0.2  # per in-plane axis; z is never flipped (anatomy is ordered)
    rot90_probability: float = 0.1  # in-plane quarter turn
    rotation_probability: float = 0.2
    max_rotation_deg: float = 15.0  # small angle about z; a third of it about y and x
    scale_probability: float = 0.25
    scale_range: tuple[float, float] = (0.8, 1.25)  # >1 means the patch covers more (zoom out)
    zoom_out_probability: float = 0.15
    zoom_out_factor: float = 2.0
    intensity_scale_probability: float = 0.15
    intensity_scale_range: tuple[float, float] = (0.9, 1.1)
    intensity_shift_probability: float = 0.15
    intensity_shift: float = 0.1
    gamma_probability: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_probability: float = 0.15
    noise_sigma: float = 0.1
    blur_probability: float = 0.1
    blur_sigma_range: tuple[float, float] = (0.5, 1.0)
    elastic_probability: float = 0.0
    elastic_sigma_mm: float = 3.0  # standard deviation of the displacement per axis
    elastic_spacing_mm: float = 24.0  # distance between the displacement's control points
    low_resolution_probability: float = 0.0
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)  # grid scale before coming back

    @classmethod
    def disabled(cls) -> AugmentationConfig:
        """No augmentation at all (used for tests and sanity checks)."""
        return cls(
            flip_probability=0.0,
            rot90_probability=0.0,
            rotation_probability=0.0,
            scale_probability=0.0,
            zoom_out_probability=0.0,
            intensity_scale_probability=0.0,
            intensity_shift_probability=0.0,
            gamma_probability=0.0,
            noise_probability=0.0,
            blur_probability=0.0,
        )


def _rotation_z(angle: float) -> np.ndarray:
    # Rotation in the (y, x) plane, about the z axis; axes ordered (z, y, x).
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def random_spatial_matrix(rng: np.random.Generator, config: AugmentationConfig) -> np.ndarray:
    """A 3x3 map from patch offsets (mm) to volume offsets (mm), axes (z, y, x).

    Identity when nothing is drawn, so the plain patch is an exact crop.
    """
    matrix = np.eye(3)
    if rng.random() < config.rot90_probability:
        matrix = _rotation_z(math.pi / 2 * int(rng.integers(1, 4))) @ matrix
    if rng.random() < config.rotation_probability:
        limit = math.radians(config.max_rotation_deg)
        matrix = (
            _rotation_z(rng.uniform(-limit, limit))
            @ _rotation_y(rng.uniform(-limit / 3, limit / 3))
            @ _rotation_x(rng.uniform(-limit / 3, limit / 3))
            @ matrix
        )
    scale = 1.0
    if rng.random() < config.zoom_out_probability:
        scale = config.zoom_out_factor
    elif rng.random() < config.scale_probability:
        scale = float(rng.uniform(*config.scale_range))
    matrix = matrix * scale
    for axis in (1, 2):
        if rng.random() < config.flip_probability:
            matrix[:, axis] *= -1
    return matrix


def random_displacement_mm(
    rng: np.random.Generator,
    config: AugmentationConfig,
    patch_size: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float],
) -> np.ndarray | None:
    """A smooth random displacement ``[3, D, H, W]`` (mm, axes z, y, x) over the patch, or None.

    Independent Gaussian offsets at control points ``elastic_spacing_mm`` apart, interpolated
    (trilinear: a fifth of the cost of cubic per patch) to every voxel, so the deformation bends
    organ and lesion outlines without tearing.

    Example: ``random_displacement_mm(rng, AugmentationConfig(elastic_probability=1.0),
    (32, 64, 64), (2.0, 1.2, 1.2)).shape`` -> ``(3, 32, 64, 64)``.
    """
    if config.elastic_probability <= 0 or rng.random() >= config.elastic_probability:
        return None
    extent_mm = np.asarray(patch_size) * np.asarray(spacing_zyx)
    points = [max(2, int(math.ceil(e / config.elastic_spacing_mm)) + 1) for e in extent_mm]
    field = np.empty((3, *patch_size), dtype=np.float32)
    for axis in range(3):
        coarse = rng.normal(0.0, config.elastic_sigma_mm, size=points).astype(np.float32)
        zoom = [n / p for n, p in zip(patch_size, points, strict=True)]
        field[axis] = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
    return field


def simulate_low_resolution(
    patch: np.ndarray, rng: np.random.Generator, config: AugmentationConfig
) -> np.ndarray:
    """The patch down-sampled by a random factor (nearest) and brought back (cubic), or as is.

    Example: ``simulate_low_resolution(patch, rng, AugmentationConfig(low_resolution_probability
    =1.0)).shape == patch.shape``.
    """
    if config.low_resolution_probability <= 0 or rng.random() >= config.low_resolution_probability:
        return patch
    factor = float(rng.uniform(*config.low_resolution_zoom))
    small = [max(1, round(n * factor)) for n in patch.shape]
    coarse = ndimage.zoom(patch, [s / n for s, n in zip(small, patch.shape, strict=True)], order=0)
    back = [n / s for n, s in zip(patch.shape, coarse.shape, strict=True)]
    return ndimage.zoom(coarse, back, order=3, mode="nearest").astype(np.float32, copy=False)


def augment_intensity(
    patch: np.ndarray, rng: np.random.Generator, config: AugmentationConfig
) -> np.ndarray:
    """Intensity augmentation of one float32 patch (returns a new array)."""
    out = simulate_low_resolution(patch.astype(np.float32, copy=True), rng, config)
    if rng.random() < config.blur_probability:
        out = ndimage.gaussian_filter(out, sigma=float(rng.uniform(*config.blur_sigma_range)))
    if rng.random() < config.gamma_probability:
        # Gamma on the patch's own [0, 1] range, then back, so the mean level is kept.
        low, high = float(out.min()), float(out.max())
        span = max(high - low, 1e-6)
        out = np.power((out - low) / span, rng.uniform(*config.gamma_range)) * span + low
    if rng.random() < config.intensity_scale_probability:
        out *= rng.uniform(*config.intensity_scale_range)
    if rng.random() < config.intensity_shift_probability:
        out += rng.uniform(-config.intensity_shift, config.intensity_shift)
    if rng.random() < config.noise_probability:
        sigma = rng.uniform(0.0, config.noise_sigma)
        out += rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)
