"""The scanner: spacing, blur, noise and calibration offset, drawn per case."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

HU_MIN, HU_MAX = -1024, 3071


@dataclass(frozen=True)
class Scanner:
    """How one case was acquired. ``spacing`` is (z, y, x) in mm."""

    spacing: tuple[float, float, float]
    noise_sigma: float  # HU, after correlation
    noise_corr_vox: float  # in-plane Gaussian correlation of the noise (voxels)
    psf_mm: float  # in-plane blur (Gaussian sigma, mm)
    hu_offset: float  # calibration offset added to every voxel (HU)

    def as_dict(self) -> dict:
        return asdict(self)


def sample_scanner(rng: np.random.Generator, size: str) -> Scanner:
    """Draw a scanner. Quiz cases mostly have 1-3 mm slices like the real set, a quarter up to
    5 mm; whole CTs have 1-2 mm slices so that 200-400 slices cover the abdomen."""
    in_plane = rng.uniform(0.6, 0.9)
    if size == "full":
        thickness = rng.uniform(1.0, 2.0)
    else:
        thickness = rng.uniform(1.0, 3.0) if rng.random() < 0.75 else rng.uniform(3.0, 5.0)
    # Thin slices are noisier (fewer photons per voxel); the rest of the spread is dose and patient.
    sigma = float(np.clip(rng.uniform(6, 18) * math.sqrt(2.5 / thickness), 5, 25))
    return Scanner(
        spacing=(thickness, in_plane, in_plane),
        noise_sigma=sigma,
        noise_corr_vox=rng.uniform(0.5, 1.0),
        psf_mm=rng.uniform(0.4, 0.9),
        hu_offset=rng.uniform(-15, 15),
    )


def _gaussian_noise_gain(sigma_vox: float) -> float:
    """Standard deviation of unit white noise after a 1D Gaussian filter of ``sigma_vox``."""
    delta = np.zeros(64)
    delta[32] = 1.0
    kernel = ndimage.gaussian_filter1d(delta, sigma_vox)
    return float(np.sqrt((kernel**2).sum()))


def acquire(
    hu: np.ndarray, scanner: Scanner, rng: np.random.Generator, chunk: int = 32
) -> np.ndarray:
    """Blur ``hu`` (float32, modified in place) with the scanner's PSF and slice profile, add
    in-plane correlated noise and the HU offset, and return int16 HU.

    Noise is made a few slices at a time: it is correlated in-plane only, so chunks are exact and
    a 512 x 512 x 400 volume never holds a second full float copy.
    """
    sz, sy, sx = scanner.spacing
    # Slice profile: a Gaussian of about 0.4 slice thickness, i.e. 0.4 voxel along z.
    sigma = (0.4, scanner.psf_mm / sy, scanner.psf_mm / sx)
    ndimage.gaussian_filter(hu, sigma, output=hu, truncate=3.0)
    gain = _gaussian_noise_gain(scanner.noise_corr_vox) ** 2
    scale = np.float32(scanner.noise_sigma / gain)
    out = np.empty(hu.shape, np.int16)
    for start in range(0, hu.shape[0], chunk):
        stop = min(start + chunk, hu.shape[0])
        noise = rng.standard_normal((stop - start, *hu.shape[1:]), dtype=np.float32)
        ndimage.gaussian_filter(
            noise, (0, scanner.noise_corr_vox, scanner.noise_corr_vox), output=noise, truncate=3.0
        )
        slab = hu[start:stop] + noise * scale + np.float32(scanner.hu_offset)
        np.clip(np.rint(slab), HU_MIN, HU_MAX, out=slab)
        out[start:stop] = slab
    return out
