"""One phantom: anatomy + lesion + scanner, sampled on a quiz ROI or a whole-abdomen grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from edgepanc.synth.anatomy import AIR_HU, LABEL_LESION, Anatomy, sample_anatomy
from edgepanc.synth.geometry import (
    DIRECTION,
    Box,
    Grid,
    box_around,
    grid_centred,
    grid_covering,
    iter_blocks,
)
from edgepanc.synth.lesion import Lesion, sample_lesion
from edgepanc.synth.scanner import Scanner, acquire, sample_scanner

SIZES = ("quiz", "full")
SPLITS = ("train", "validation", "test")
FULL_IN_PLANE = 512


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate. The random stream depends on (seed, split, subtype, index) only, so a
    case stays the same when the number of cases asked for changes."""

    seed: int
    split: str
    subtype: int
    index: int
    size: str = "quiz"

    def rng(self) -> np.random.Generator:
        key = [self.seed, SPLITS.index(self.split), self.subtype, self.index]
        return np.random.default_rng(np.random.SeedSequence(key))


@dataclass
class Phantom:
    """A generated case: int16 HU and uint8 labels (z, y, x) on ``grid``."""

    image: np.ndarray
    label: np.ndarray
    grid: Grid
    subtype: int
    scanner: Scanner
    info: dict = field(default_factory=dict)

    def image_sitk(self) -> sitk.Image:
        return _to_sitk(self.image, self.grid)

    def label_sitk(self) -> sitk.Image:
        return _to_sitk(self.label, self.grid)


def _to_sitk(array: np.ndarray, grid: Grid) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.sitk_spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(DIRECTION)
    return image


def quiz_grid(
    rng: np.random.Generator,
    pancreas_box: Box,
    lesion_box: Box,
    spacing: tuple[float, float, float],
) -> Grid:
    """An ROI round the pancreas and lesion with a random margin of a few cm, as in the quiz set."""
    roi = pancreas_box.union(lesion_box)
    lo = rng.uniform([5, 5, 15], [15, 15, 30])
    hi = rng.uniform([5, 5, 15], [15, 15, 30])
    return grid_covering(Box(tuple(np.subtract(roi.lo, lo)), tuple(np.add(roi.hi, hi))), spacing)  # type: ignore[arg-type]


def full_grid(rng: np.random.Generator, anatomy: Anatomy, scanner: Scanner) -> tuple[Grid, Scanner]:
    """A 512 x 512 axial field of view round the body with 200-400 slices over the abdomen.

    The in-plane spacing follows the patient's width (the body fills most of the field of view),
    within the 0.6-0.9 mm the scanner model allows.
    """
    width = 2 * anatomy.body.a
    in_plane = float(np.clip(width * rng.uniform(1.08, 1.3) / FULL_IN_PLANE, 0.6, 0.9))
    n_slices = int(rng.integers(200, 401))
    spacing = (scanner.spacing[0], in_plane, in_plane)
    pancreas_z = anatomy.pancreas.box().centre[2]
    centre = (
        0.0,
        anatomy.body.b * 0.1,
        pancreas_z + rng.uniform(-0.2, 0.2) * n_slices * spacing[0],
    )
    grid = grid_centred(centre, (n_slices, FULL_IN_PLANE, FULL_IN_PLANE), spacing)
    return grid, Scanner(
        spacing, scanner.noise_sigma, scanner.noise_corr_vox, scanner.psf_mm, scanner.hu_offset
    )


def render(anatomy: Anatomy, lesion: Lesion, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Paint every structure, then the lesion, onto ``grid``: float32 HU and uint8 labels."""
    hu = np.full(grid.shape, AIR_HU, np.float32)
    label = np.zeros(grid.shape, np.uint8)
    for structure in anatomy.structures:
        for block in iter_blocks(hu, label, grid, structure.box()):
            structure.paint(block)
    before = label.copy()
    for block in iter_blocks(hu, label, grid, lesion.box()):
        lesion.paint(block)
    _keep_one_lesion(label, before)
    return hu, label


def _keep_one_lesion(label: np.ndarray, before: np.ndarray) -> None:
    """The lesion surface is star-shaped and so connected, but sampling a thin spike of an
    infiltrative margin can leave a stray voxel: give such voxels their previous label back."""
    components, n = ndimage.label(label == LABEL_LESION)
    if n <= 1:
        return
    sizes = np.bincount(components.ravel())[1:]
    stray = (components > 0) & (components != int(sizes.argmax()) + 1)
    label[stray] = before[stray]


def generate_phantom(spec: PhantomSpec) -> Phantom:
    """Generate one case, deterministically from ``spec``."""
    if spec.size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {spec.size!r}")
    rng = spec.rng()
    anatomy = sample_anatomy(rng)
    lesion = sample_lesion(rng, anatomy.pancreas, spec.subtype)
    scanner = sample_scanner(rng, spec.size)
    if spec.size == "full":
        grid, scanner = full_grid(rng, anatomy, scanner)
    else:
        grid = quiz_grid(rng, anatomy.pancreas.box(), lesion.box(), scanner.spacing)
    hu, label = render(anatomy, lesion, grid)
    image = acquire(hu, scanner, rng)
    del hu
    info = {
        "lesion_diameter_mm": round(2 * lesion.radius, 2),
        "lesion_centre_lps": [round(float(v), 2) for v in lesion.centre],
        "scanner": scanner.as_dict(),
        **{k: round(v, 4) for k, v in anatomy.extras.items()},
    }
    return Phantom(image, label, grid, spec.subtype, scanner, info)


__all__ = ["Phantom", "PhantomSpec", "generate_phantom", "render", "box_around"]
