"""One pancreatic lesion per phantom, its look set by the subtype.

The three subtypes overlap in mean HU on purpose; what separates them is structure a CNN can see
at about 1 x 1 x 2.5 mm:

- 0, hypo-attenuating solid (PDAC-like): irregular infiltrative margin blended into the gland,
  heterogeneous interior.
- 1, cystic: fluid, a very smooth sharp boundary, a thin enhancing wall and internal septa.
- 2, hyper-enhancing (neuroendocrine-like): a thick bright ring round an enhancing or necrotic core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgepanc.synth.anatomy import LABEL_LESION, Pancreas
from edgepanc.synth.fields import FourierNoise, random_noise
from edgepanc.synth.geometry import Block, Box

SUBTYPES = (0, 1, 2)
DIAMETER_MM = (5.0, 40.0)


@dataclass
class Lesion:
    """A star-shaped lesion round ``centre``: its surface is ``radius * (1 + shape_amp * n(dir))``
    with ``n`` a smooth field on the sphere, so the lesion is always one connected piece."""

    subtype: int
    centre: np.ndarray  # x, y, z (mm)
    radius: float
    shape: FourierNoise
    shape_amp: float
    margin_mm: float  # width of the blend into the surrounding tissue
    core_hu: float
    texture: FourierNoise
    texture_hu: float
    rim_mm: float = 0.0
    rim_hu: float = 0.0
    septa: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (unit normal, offset mm)
    septum_mm: float = 0.0
    septum_hu: float = 0.0

    def box(self) -> Box:
        r = self.radius * (1 + self.shape_amp) + 2 * self.margin_mm + 1
        c = self.centre
        return Box((c[0] - r, c[1] - r, c[2] - r), (c[0] + r, c[1] + r, c[2] + r))

    def paint(self, block: Block) -> None:
        dx = (block.xx - self.centre[0]).astype(np.float32)
        dy = (block.yy - self.centre[1]).astype(np.float32)
        dz = (block.zz - self.centre[2]).astype(np.float32)
        dist = np.sqrt(dx * dx + dy * dy + dz * dz)
        reach = self.radius * (1 + self.shape_amp) + 2 * self.margin_mm
        index = np.nonzero(dist < reach)
        if index[0].size == 0:
            return
        d = dist[index]
        offset = np.stack([np.broadcast_to(a, dist.shape)[index] for a in (dx, dy, dz)], axis=1)
        unit = offset / np.maximum(d, 1e-6)[:, None]
        # Evaluate the shape field on the sphere of radius `radius`: a function of direction only.
        surface = self.radius * (
            1 + self.shape_amp * np.clip(self.shape(self.centre + unit * self.radius), -2, 2) / 2
        )
        depth = surface - d  # mm below the surface, negative outside
        value = self._interior(self.texture.at(block, index), offset, depth)
        weight = np.clip(0.5 + depth / (2 * self.margin_mm), 0, 1).astype(np.float32)
        hu = block.hu[index]
        block.hu[index] = hu + weight * (value - hu)
        inside = depth >= 0
        block.label[tuple(i[inside] for i in index)] = LABEL_LESION

    def _interior(self, texture: np.ndarray, offset: np.ndarray, depth: np.ndarray) -> np.ndarray:
        value = self.core_hu + self.texture_hu * texture
        if self.rim_mm > 0:
            value = np.where(depth < self.rim_mm, np.float32(self.rim_hu), value)
        for normal, plane_offset in self.septa:
            on_septum = np.abs(offset @ normal - plane_offset) < self.septum_mm / 2
            value = np.where(on_septum & (depth > 0), np.float32(self.septum_hu), value)
        return value.astype(np.float32)


def sample_diameter(rng: np.random.Generator) -> float:
    """Lesion diameter (mm), log-uniform: small lesions are the common ones."""
    lo, hi = DIAMETER_MM
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_lesion(rng: np.random.Generator, pancreas: Pancreas, subtype: int) -> Lesion:
    """A lesion of ``subtype`` centred inside the gland, from the middle out to its edge."""
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype must be one of {SUBTYPES}, got {subtype}")
    u = rng.uniform
    tube = pancreas.tube
    # Keep clear of the very tip, where the gland is thinnest.
    k = int(rng.integers(0, max(1, int(len(tube.points) * 0.92))))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    centre = tube.points[k] + direction * tube.radii[k] * u(0.0, 0.85)
    radius = sample_diameter(rng) / 2
    texture = random_noise(rng, (2.5, 6.0), modes=10)
    if subtype == 0:
        return Lesion(
            subtype,
            centre,
            radius,
            shape=random_noise(rng, (4, 9), modes=10),
            shape_amp=u(0.3, 0.5),
            margin_mm=u(1.8, 3.0),
            core_hu=u(20, 118),
            texture=texture,
            texture_hu=u(12, 22),
        )
    if subtype == 1:
        n_septa = 0 if radius < 4 else int(rng.integers(1, 4))
        septa = []
        for _ in range(n_septa):
            normal = rng.normal(size=3)
            normal[2] *= 0.3  # septa mostly cut across slices, so thick slices still show them
            septa.append((normal / np.linalg.norm(normal), float(u(-0.5, 0.5) * radius)))
        return Lesion(
            subtype,
            centre,
            radius,
            shape=random_noise(rng, (18, 40), modes=6),
            shape_amp=u(0.03, 0.12),
            margin_mm=0.4,
            core_hu=u(-10, 25),
            texture=texture,
            texture_hu=u(1, 4),
            rim_mm=float(np.clip(0.12 * radius, 0.6, 1.8)),
            rim_hu=u(70, 120),
            septa=septa,
            septum_mm=u(1.6, 2.6),
            septum_hu=u(70, 120),
        )
    necrotic = radius >= 5 and rng.random() < 0.75
    return Lesion(
        subtype,
        centre,
        radius,
        shape=random_noise(rng, (20, 40), modes=6),
        shape_amp=u(0.03, 0.08),
        margin_mm=0.8,
        core_hu=u(-5, 30) if necrotic else u(30, 70),
        texture=texture,
        texture_hu=u(3, 8),
        rim_mm=float(np.clip(0.22 * radius, 2.2, 3.2)),
        rim_hu=u(100, 170),
    )
