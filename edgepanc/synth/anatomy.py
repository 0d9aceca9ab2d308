"""Abdominal anatomy as painters: each structure knows its box and paints HU (and labels) into a
block of voxels, from functions of LPS position in millimetres.

Painting order matters (later structures cover earlier ones): body wall, spine and muscles,
organs, the fat plane round the pancreas, bowel, pancreas, then the vessels that run along and through the pancreas (they clear the
pancreas label where they pass, as an annotator would). LPS: +x is the patient's left, +y the
back, +z the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgepanc.synth.fields import FourierNoise, Tube, random_noise, sample_curve
from edgepanc.synth.geometry import Block, Box

AIR_HU = -1000.0
GAS_HU = -950.0
LABEL_PANCREAS = 1
LABEL_LESION = 2
_FAR = 1.0e4  # mm: "unbounded" along an axis


class Structure(Protocol):
    """Anything that paints itself into the phantom."""

    def box(self) -> Box: ...

    def paint(self, block: Block) -> None: ...


def _ellipse_depth(dx: np.ndarray, dy: np.ndarray, a: float, b: float) -> np.ndarray:
    """Depth (mm) below the boundary of an ellipse with semi-axes a, b, measured along the ray
    from its centre; negative outside. Exact on the axes, a fair approximation elsewhere."""
    radial = np.sqrt(dx * dx + dy * dy)
    r = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(r > 1e-6, radial * (1.0 / r - 1.0), min(a, b))
    return depth.astype(np.float32)


@dataclass
class BodyWall:
    """Skin, subcutaneous fat, abdominal wall muscle and the visceral fat inside, plus the table."""

    a: float  # semi-axis towards the left (mm)
    b: float  # semi-axis towards the back (mm)
    skin_mm: float
    fat_mm: float
    muscle_mm: float
    skin_hu: float
    fat_hu: float
    muscle_hu: float
    visceral_fat_hu: float
    table_hu: float

    def box(self) -> Box:
        return Box((-_FAR, -_FAR, -_FAR), (_FAR, _FAR, _FAR))

    def cavity_depth(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Depth (mm) inside the muscle wall: organs are kept where this is positive."""
        wall = self.skin_mm + self.fat_mm + self.muscle_mm
        return _ellipse_depth(xx, yy, self.a, self.b) - wall

    def paint(self, block: Block) -> None:
        yy, xx = block.yy[0], block.xx[0]  # (ny, 1), (1, nx): the body is a cylinder along z
        depth = _ellipse_depth(xx, yy, self.a, self.b)
        # Subcutaneous fat is thicker in front and at the flanks than over the back muscles.
        front = np.clip(-yy / self.b, 0, 1)
        fat = self.fat_mm * (0.6 + 0.8 * front)
        hu = np.full(depth.shape, AIR_HU, np.float32)
        hu[depth >= 0] = self.skin_hu
        hu[depth >= self.skin_mm] = self.fat_hu
        hu[depth >= self.skin_mm + fat] = self.muscle_hu
        hu[depth >= self.skin_mm + fat + self.muscle_mm] = self.visceral_fat_hu
        table = (yy > self.b + 12) & (yy < self.b + 22) & (np.abs(xx) < self.a * 1.1)
        hu = np.where(table, np.float32(self.table_hu), hu)
        block.hu[...] = hu[None]


@dataclass
class Spine:
    """Vertebral bodies (cortex, cancellous bone, discs), canal, posterior elements, psoas and
    paraspinal muscles, all around a vertical axis at x = 0."""

    centre_y: float
    rx: float
    ry: float
    cortex_mm: float
    cortical_hu: float
    cancellous_hu: float
    disc_hu: float
    disc_period: float
    disc_mm: float
    disc_phase: float
    muscle_hu: float
    csf_hu: float

    def box(self) -> Box:
        return Box(
            (-self.rx - 90, self.centre_y - self.ry - 45, -_FAR),
            (self.rx + 90, self.centre_y + self.ry + 80, _FAR),
        )

    def paint(self, block: Block) -> None:
        zz, yy, xx = block.zz, block.yy, block.xx
        hu = block.hu
        cy, ry = self.centre_y, self.ry
        back = cy + ry
        # Paraspinal muscles behind the spine, psoas beside it growing towards the pelvis.
        for side in (-1, 1):
            para = ((xx - side * 32) / 26) ** 2 + ((yy - back - 38) / 24) ** 2 < 1
            hu[np.broadcast_to(para, hu.shape)] = self.muscle_hu
            grow = np.clip(-zz / 150.0, 0, 1)  # psoas thickens inferiorly
            r_psoas = 10 + 14 * grow
            psoas = ((xx - side * (self.rx + 8 + r_psoas * 0.6)) / (r_psoas * 1.1)) ** 2 + (
                (yy - cy) / r_psoas
            ) ** 2 < 1
            hu[np.broadcast_to(psoas, hu.shape)] = self.muscle_hu
        # Posterior arch (lamina and spinous process) around the canal.
        arch = ((xx / 16) ** 2 + ((yy - back - 10) / 13) ** 2 < 1) | (
            (np.abs(xx) < 5) & (yy > back + 10) & (yy < back + 48)
        )
        hu[np.broadcast_to(arch, hu.shape)] = 0.5 * (self.cortical_hu + self.cancellous_hu)
        canal = (xx / 9) ** 2 + ((yy - back - 9) / 8) ** 2 < 1
        hu[np.broadcast_to(canal, hu.shape)] = self.csf_hu
        # Vertebral body: cortical shell round cancellous bone, discs every disc_period mm.
        depth = _ellipse_depth(xx, yy - cy, self.rx, self.ry)
        disc = ((zz - self.disc_phase) % self.disc_period) < self.disc_mm
        body = np.where(
            depth < self.cortex_mm, np.float32(self.cortical_hu), np.float32(self.cancellous_hu)
        )
        value = np.where(disc, np.float32(self.disc_hu), body)
        inside = np.broadcast_to(depth >= 0, hu.shape)
        hu[inside] = np.broadcast_to(value, hu.shape)[inside]


@dataclass
class VerticalVessel:
    """A vessel running head to foot (aorta, IVC), drifting a little sideways with z."""

    x: float
    y: float
    rx: float
    ry: float
    hu: float
    drift_x_per_100mm: float = 0.0

    def box(self) -> Box:
        reach = max(self.rx, self.ry) + 1 + abs(self.drift_x_per_100mm) * 20
        return Box((self.x - reach, self.y - reach, -_FAR), (self.x + reach, self.y + reach, _FAR))

    def paint(self, block: Block) -> None:
        cx = self.x + self.drift_x_per_100mm * np.clip(block.zz / 100.0, -2, 2)
        inside = ((block.xx - cx) / self.rx) ** 2 + ((block.yy - self.y) / self.ry) ** 2 < 1
        block.hu[np.broadcast_to(inside, block.hu.shape)] = self.hu


@dataclass
class Organ:
    """A solid or hollow organ: a rotated, gently deformed ellipsoid, optionally with a cortex or
    wall of its own HU, a gas cap in front (hollow organs lie supine), and a parenchymal texture.
    Kept inside the abdominal cavity."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    hu: float
    angle_deg: float = 0.0
    cortex_mm: float = 0.0
    cortex_hu: float = 0.0
    gas_below_y: float | None = None  # gas where y < this (anterior part of a hollow organ)
    texture_hu: float = 0.0
    texture: FourierNoise | None = None
    shape: FourierNoise | None = None
    shape_amp: float = 0.08
    body: BodyWall | None = None

    def box(self) -> Box:
        r = max(self.semi) * (1 + self.shape_amp) + 1
        c = self.centre
        return Box(
            (c[0] - r, c[1] - r, c[2] - self.semi[2] * (1 + self.shape_amp) - 1),
            (c[0] + r, c[1] + r, c[2] + self.semi[2] * (1 + self.shape_amp) + 1),
        )

    def paint(self, block: Block) -> None:
        cx, cy, cz = self.centre
        ax, ay, az = self.semi
        t = math.radians(self.angle_deg)
        dx, dy, dz = block.xx - cx, block.yy - cy, block.zz - cz
        u = dx * math.cos(t) + dy * math.sin(t)
        v = -dx * math.sin(t) + dy * math.cos(t)
        r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2 + (dz / az) ** 2).astype(np.float32)
        if self.shape is not None:
            r = r / (1 + self.shape_amp * np.clip(self.shape.on_block(block), -2, 2) / 2)
        inside = r < 1
        if self.body is not None:
            inside &= self.body.cavity_depth(block.yy, block.xx) > 0
        if not inside.any():
            return
        index = np.nonzero(inside)
        value = np.full(index[0].shape, self.hu, np.float32)
        if self.cortex_mm > 0:
            depth = (1 - r[index]) * min(ax, ay, az)
            value[depth < self.cortex_mm] = self.cortex_hu
        if self.gas_below_y is not None:
            lumen = value == self.hu
            gas = lumen & (block.y[index[1]] < self.gas_below_y)
            value[gas] = GAS_HU
        if self.texture is not None and self.texture_hu:
            value += self.texture_hu * self.texture.at(block, index)
        block.hu[index] = value


@dataclass
class AlongTube:
    """A structure laid along a :class:`Tube` (bowel, gland, fat plane, vessel): its box is the
    tube's; subclasses paint the tube's voxels."""

    tube: Tube

    def box(self) -> Box:
        return self.tube.box()

    def _inside(self, block: Block) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
        """Index and depth below the surface of the block's voxels in the tube; None if none."""
        index, depth, _, _ = self.tube.depth(block)
        return (index, depth) if depth.size else None


@dataclass
class BowelLoop(AlongTube):
    """A bowel segment: an enhancing wall round fluid, gas, a gas-fluid level or mottled stool."""

    wall_mm: float
    wall_hu: float
    lumen_hu: float
    content: str  # "fluid" | "gas" | "level" | "stool"
    level_y: float = 0.0
    stool: FourierNoise | None = None

    def paint(self, block: Block) -> None:
        inside = self._inside(block)
        if inside is None:
            return
        index, depth = inside
        value = np.full(depth.shape, self.lumen_hu, np.float32)
        if self.content == "gas":
            value[:] = GAS_HU
        elif self.content == "level":
            value[block.y[index[1]] < self.level_y] = GAS_HU
        elif self.content == "stool" and self.stool is not None:
            pockets = self.stool.at(block, index) > 0.6
            value[pockets] = GAS_HU
        value[depth < self.wall_mm] = self.wall_hu
        block.hu[index] = value


@dataclass
class Pancreas(AlongTube):
    """The pancreas: a lobulated tube along a curve, with a fine texture and fatty clefts."""

    hu: float
    texture: FourierNoise
    texture_hu: float
    clefts: FourierNoise
    cleft_hu: float
    fat_hu: float

    def paint(self, block: Block) -> None:
        inside = self._inside(block)
        if inside is None:
            return
        index, depth = inside
        value = self.hu + self.texture_hu * self.texture.at(block, index)
        # Fat between lobules: a thin network where the cleft field is high, stronger near the
        # surface, blended so that it pulls the HU down without carving holes in the label.
        cleft = np.clip(self.clefts.at(block, index) - 1.0, 0, 1) * np.clip(
            1.5 - depth / 4.0, 0.3, 1
        )
        value = value + cleft * self.cleft_hu * (self.fat_hu - value) / 100.0
        block.hu[index] = value
        block.label[index] = LABEL_PANCREAS


@dataclass
class FatPlane(AlongTube):
    """The fat round the pancreas: the gland is retroperitoneal and a plane of fat, thin in places
    and absent in others, separates it from the liver, spleen, stomach and kidneys.

    Painted after the solid organs and before the bowel and the gland itself, so that it pushes
    organs of the gland's own attenuation back from its surface while bowel loops (the duodenum
    round the head) can still touch it. Without it, a gland painted over the liver had no edge at
    all there: 28% of its outer boundary (up to 50% in a case) lay against tissue within 25 HU
    of its own, and the label was a guess an annotator could not have made.
    Bone, gas, enhancing vessels and anything brighter than 250 HU are left as they are.
    """

    hu: float

    def paint(self, block: Block) -> None:
        inside = self._inside(block)
        if inside is None:
            return
        index, _ = inside
        current = block.hu[index]
        soft = (current > -500.0) & (current < 250.0)
        block.hu[tuple(i[soft] for i in index)] = self.hu


@dataclass
class VesselTube(AlongTube):
    """A contrast-filled vessel along a curve; it takes its lumen out of the pancreas label."""

    hu: float

    def paint(self, block: Block) -> None:
        inside = self._inside(block)
        if inside is None:
            return
        index, _ = inside
        block.hu[index] = self.hu
        label = block.label[index]
        block.label[index] = np.where(label == LABEL_PANCREAS, 0, label)


@dataclass
class Anatomy:
    """One patient: the structures in painting order and the pancreas they are built around."""

    structures: list[Structure]
    pancreas: Pancreas
    body: BodyWall
    centre_line_t: np.ndarray  # curve parameter of each pancreas point (0 uncinate .. 6 tip)
    extras: dict[str, float] = field(default_factory=dict)


# --- sampling -----------------------------------------------------------------------------------

# Pancreas control points (x, y, z) relative to the front of the aorta at the level of the neck,
# and their radii (mm): uncinate, head, neck, body, body, tail, tip.
_PANCREAS_CONTROL = np.array(
    [
        [-24.0, -18.0, -30.0],
        [-36.0, -30.0, -12.0],
        [-8.0, -42.0, 0.0],
        [25.0, -38.0, 8.0],
        [55.0, -22.0, 14.0],
        [80.0, -2.0, 20.0],
        [96.0, 14.0, 24.0],
    ]
)
_PANCREAS_RADII = np.array([[11, 14], [14, 18], [8, 11], [9, 12], [8, 11], [7, 10], [5, 7]], float)


def _random_walk(
    rng: np.random.Generator, start: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int, step: float
) -> np.ndarray:
    """Control points of a meandering loop kept inside [lo, hi] (mm)."""
    points = [start]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    for _ in range(n - 1):
        direction = direction + rng.normal(scale=0.8, size=3)
        direction /= np.linalg.norm(direction)
        nxt = points[-1] + step * direction
        # Bounce off the region's faces so loops stay in the lower abdomen.
        over, under = nxt > hi, nxt < lo
        direction[over | under] *= -1
        points.append(np.clip(nxt, lo, hi))
    return np.array(points)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy: sizes, positions, shapes and (contrast-phase) intensities."""
    u = rng.uniform
    contrast = u(0.8, 1.2)  # one bolus for the whole patient: vessels and organs enhance together
    body = BodyWall(
        a=u(140, 175),
        b=u(105, 135),
        skin_mm=u(2, 3.5),
        fat_mm=u(10, 30),
        muscle_mm=u(8, 14),
        skin_hu=u(30, 55),
        fat_hu=u(-115, -85),
        muscle_hu=u(40, 60),
        visceral_fat_hu=u(-110, -80),
        table_hu=u(100, 250),
    )
    wall = body.skin_mm + body.fat_mm * 0.6 + body.muscle_mm
    spine_y = body.b - wall - u(55, 65)
    spine = Spine(
        centre_y=spine_y,
        rx=u(20, 25),
        ry=u(15, 19),
        cortex_mm=u(1.8, 3.0),
        cortical_hu=u(700, 1000),
        cancellous_hu=u(180, 300),
        disc_hu=u(70, 100),
        disc_period=u(28, 34),
        disc_mm=u(7, 10),
        disc_phase=u(0, 30),
        muscle_hu=body.muscle_hu + u(-5, 5),
        csf_hu=u(5, 25),
    )
    r_aorta = u(9, 12.5)
    aorta_hu = u(180, 260) * contrast
    venous_hu = u(150, 210) * contrast
    aorta = VerticalVessel(
        u(10, 18), spine_y - spine.ry - r_aorta - 2, r_aorta, r_aorta, aorta_hu, u(-3, 3)
    )
    ivc = VerticalVessel(
        u(-30, -22), spine_y - spine.ry - 6, u(11, 14), u(7, 10), venous_hu * u(0.75, 0.9), u(-3, 3)
    )

    # Pancreas: the template curve, scaled, shifted and bent per patient.
    anchor = np.array([0.0, aorta.y - r_aorta, u(-10, 10)])
    scale = u(0.85, 1.15)
    control = (
        anchor + _PANCREAS_CONTROL * scale + rng.normal(scale=5.0, size=_PANCREAS_CONTROL.shape)
    )
    control += rng.normal(scale=6.0, size=3)
    points, t = sample_curve(control, step_mm=1.0)
    knot_radii = rng.uniform(_PANCREAS_RADII[:, 0], _PANCREAS_RADII[:, 1]) * math.sqrt(scale)
    radii = np.interp(t, np.arange(len(knot_radii)), knot_radii)
    lobes = random_noise(rng, (6, 14), modes=10)
    pancreas = Pancreas(
        tube=Tube(points, radii, lobulation=u(0.18, 0.3), noise=lobes),
        hu=u(90, 130),
        texture=random_noise(rng, (2.5, 6), modes=10),
        texture_hu=u(4, 9),
        clefts=random_noise(rng, (3, 7), modes=12),
        cleft_hu=u(20, 60),
        fat_hu=body.visceral_fat_hu,
    )
    head = control[1]
    # Fat-plane thickness along the gland (mm), per control point: 0 where it touches.
    plane_mm = np.clip(rng.uniform(-1.0, 4.0, size=len(knot_radii)), 0.0, None)
    fat_plane = FatPlane(
        tube=Tube(
            points,
            radii + np.interp(t, np.arange(len(plane_mm)), plane_mm),
            lobulation=pancreas.tube.lobulation,
            noise=lobes,
        ),
        hu=body.visceral_fat_hu,
    )

    organ_shape = lambda: random_noise(rng, (40, 90), modes=5)  # noqa: E731
    liver = Organ(
        centre=(-body.a * u(0.4, 0.5), u(-15, 5), head[2] + u(45, 65)),
        semi=(body.a * u(0.5, 0.6), body.b * u(0.7, 0.85), u(75, 95)),
        hu=u(95, 130),
        angle_deg=u(-15, 15),
        texture_hu=u(3, 7),
        texture=random_noise(rng, (6, 18)),
        shape=organ_shape(),
        body=body,
    )
    gallbladder = Organ(
        centre=(head[0] - u(10, 25), head[1] - u(15, 30), head[2] + u(25, 40)),
        semi=(u(12, 18), u(12, 18), u(25, 40)),
        hu=u(0, 25),
        angle_deg=u(0, 40),
        cortex_mm=1.5,
        cortex_hu=u(50, 90),
        shape=organ_shape(),
        body=body,
    )
    spleen = Organ(
        centre=(body.a * u(0.55, 0.65), spine_y - u(0, 25), head[2] + u(40, 60)),
        semi=(u(22, 30), u(40, 55), u(45, 65)),
        hu=u(100, 135),
        angle_deg=u(20, 45),
        texture_hu=u(2, 5),
        texture=random_noise(rng, (5, 15)),
        shape=organ_shape(),
        body=body,
    )
    kidneys = [
        Organ(
            centre=(
                side * u(62, 75),
                spine_y + u(0, 10),
                head[2] + u(-30, -5) + (10 if side > 0 else 0),
            ),
            semi=(u(24, 30), u(20, 26), u(48, 60)),
            hu=u(90, 140) * contrast,
            angle_deg=side * u(20, 40),
            cortex_mm=u(5, 8),
            cortex_hu=u(150, 210) * contrast,
            shape=organ_shape(),
            shape_amp=0.05,
            body=body,
        )
        for side in (-1, 1)
    ]
    stomach_y = -body.b * u(0.3, 0.45)
    stomach_semi_y = u(30, 42)
    stomach = Organ(
        centre=(body.a * u(0.25, 0.4), stomach_y, head[2] + u(45, 65)),
        semi=(u(45, 60), stomach_semi_y, u(40, 55)),
        hu=u(0, 40),
        angle_deg=u(-30, 10),
        cortex_mm=u(3, 5),
        cortex_hu=u(70, 120),
        gas_below_y=stomach_y - stomach_semi_y * u(-0.2, 0.7) if rng.random() < 0.8 else None,
        shape=organ_shape(),
        body=body,
    )

    bowel = _sample_bowel(rng, body, head)
    vessels = _sample_mesenteric_vessels(
        rng, control, points, radii, t, aorta, r_aorta, aorta_hu, venous_hu
    )
    structures: list[Structure] = [
        body,
        spine,
        aorta,
        ivc,
        liver,
        gallbladder,
        spleen,
        *kidneys,
        stomach,
        fat_plane,
        *bowel,
        pancreas,
        *vessels,
    ]
    return Anatomy(structures, pancreas, body, t, {"contrast": contrast})


def _bowel_content(rng: np.random.Generator) -> str:
    return str(rng.choice(["fluid", "gas", "level", "stool"], p=[0.4, 0.15, 0.3, 0.15]))


def _sample_bowel(rng: np.random.Generator, body: BodyWall, head: np.ndarray) -> list[Structure]:
    """Duodenal C-loop round the pancreatic head, the transverse colon and small-bowel loops."""
    u = rng.uniform
    loops: list[Structure] = []

    def loop(
        control: np.ndarray, r_lo: float, r_hi: float, content: str | None = None
    ) -> BowelLoop:
        points, _ = sample_curve(control, step_mm=1.0)
        radius = u(r_lo, r_hi)
        radii = radius * (
            1 + 0.15 * np.sin(np.linspace(0, u(2, 6) * math.pi, len(points)) + u(0, 6))
        )
        kind = content or _bowel_content(rng)
        return BowelLoop(
            Tube(points, radii),
            wall_mm=u(1.8, 3.0),
            wall_hu=u(70, 130),
            lumen_hu=u(0, 35),
            content=kind,
            level_y=float(points[:, 1].mean()),
            stool=random_noise(rng, (4, 10)),
        )

    # Duodenum: bulb, descending, horizontal and ascending parts wrapped round the head.
    c_loop = head + np.array(
        [
            [20, -36, 36],
            [-12, -30, 30],
            [-32, -8, 14],
            [-34, -4, -16],
            [-16, 2, -40],
            [16, 6, -44],
            [46, 2, -36],
            [64, 6, -16],
        ],
        float,
    )
    c_loop += rng.normal(scale=3.0, size=c_loop.shape)
    loops.append(loop(c_loop, 8, 12))
    # Transverse colon in front of the pancreas, with its flexures and the vertical limbs.
    a, b = body.a, body.b
    z0 = head[2]
    colon = np.array(
        [
            [-0.6 * a, -0.05 * b, z0 - 120],
            [-0.6 * a, -0.15 * b, z0 - 40],
            [-0.55 * a, -0.3 * b, z0 + 10],
            [-0.2 * a, -0.62 * b, z0 - 25],
            [0.2 * a, -0.62 * b, z0 - 20],
            [0.58 * a, -0.2 * b, z0 + 25],
            [0.62 * a, 0.05 * b, z0 - 40],
            [0.6 * a, 0.05 * b, z0 - 120],
        ]
    )
    colon += rng.normal(scale=6.0, size=colon.shape)
    loops.append(loop(colon, 16, 23, content=str(rng.choice(["stool", "gas", "level"]))))
    # Jejunal and ileal loops below the mesocolon, some reaching up beside the pancreatic tail.
    lo = np.array([-0.45 * a, -0.7 * b, z0 - 170])
    hi = np.array([0.5 * a, -0.05 * b, z0 - 35])
    for _ in range(int(rng.integers(5, 9))):
        start = rng.uniform(lo, hi)
        loops.append(
            loop(_random_walk(rng, start, lo, hi, int(rng.integers(5, 9)), u(22, 30)), 8, 13)
        )
    jejunum_lo = np.array([0.2 * a, -0.55 * b, z0 - 40])
    jejunum_hi = np.array([0.55 * a, -0.1 * b, z0 - 5])
    loops.append(
        loop(
            _random_walk(rng, rng.uniform(jejunum_lo, jejunum_hi), jejunum_lo, jejunum_hi, 5, 20),
            8,
            12,
        )
    )
    return loops


def _sample_mesenteric_vessels(
    rng: np.random.Generator,
    control: np.ndarray,
    points: np.ndarray,
    radii: np.ndarray,
    t: np.ndarray,
    aorta: VerticalVessel,
    r_aorta: float,
    arterial_hu: float,
    venous_hu: float,
) -> list[Structure]:
    """SMA and SMV near the head and neck, the splenic vein along the back of the body and tail,
    the splenic artery along its upper border and the portal vein up to the liver."""
    u = rng.uniform
    neck = control[2]
    smv_x, sma_x = neck[0] - u(2, 8), neck[0] + u(6, 12)
    front = aorta.y - r_aorta
    smv_top = np.array([smv_x, neck[1] + u(12, 18), neck[2] + 4])
    smv = np.array(
        [smv_top, [smv_x - 4, front - 24, neck[2] - 60], [smv_x - 8, front - 30, neck[2] - 150]]
    )
    sma = np.array(
        [
            [aorta.x, front + 2, neck[2] + 14],
            [sma_x, front - 14, neck[2] - 20],
            [sma_x - 4, front - 22, neck[2] - 150],
        ]
    )
    # Splenic vein: behind the pancreas from the neck to the tip, then on to the splenic hilum.
    along = (t >= 2.0) & (t <= 6.0)
    behind = points[along] + np.stack(
        [np.zeros(along.sum()), radii[along] * 0.85 + 2.5, np.full(along.sum(), 2.0)], axis=1
    )
    behind = np.vstack([smv_top, behind[:: max(1, len(behind) // 8)], behind[-1] + [10, 15, 15]])
    splenic_artery = points[along][:: max(1, along.sum() // 8)] + np.stack(
        [
            np.zeros(len(points[along][:: max(1, along.sum() // 8)])),
            np.full(len(points[along][:: max(1, along.sum() // 8)]), 4.0),
            radii[along][:: max(1, along.sum() // 8)] + 3.0,
        ],
        axis=1,
    )
    splenic_artery += rng.normal(scale=2.0, size=splenic_artery.shape)
    portal = np.array([smv_top, smv_top + [-20, 0, 25], smv_top + [-45, u(-5, 5), 50]])

    def vessel(control_points: np.ndarray, r_lo: float, r_hi: float, hu: float) -> VesselTube:
        pts, _ = sample_curve(control_points, step_mm=1.0)
        return VesselTube(Tube(pts, np.full(len(pts), u(r_lo, r_hi))), hu)

    return [
        vessel(smv, 4.5, 6.5, venous_hu),
        vessel(sma, 3.0, 4.5, arterial_hu),
        vessel(behind, 3.5, 5.0, venous_hu),
        vessel(splenic_artery, 2.0, 3.0, arterial_hu),
        vessel(portal, 6.0, 8.0, venous_hu),
    ]
