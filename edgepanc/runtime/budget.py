"""Memory-budget planning for ``edgepanc run --memory-budget``.

The peak resident memory of a run is the process's baseline (interpreter, libraries, the model:
measured with :func:`edgepanc.memory.current_rss` once the predictor is loaded) plus the
largest of three phases, because the pipeline frees each phase's buffers before the next:

- **preprocess**: reading holds the image twice at its peak (SimpleITK's NIfTI reader decodes
  the file into a buffer of its own before the image; int16 stays int16), then the image with
  the float32 volume the pass tiles, resampled straight from it, and its normalised copy
  (:class:`~edgepanc.preprocessing.network_input.NetworkInput`);
- **infer**: the image (kept to measure the mask on its own grid), the float32 volume, its uint8
  label map, the two uint8 region probability maps kept for restoring
  (:mod:`edgepanc.inferers.probabilities`), the streaming slab of logits still in play
  (:func:`edgepanc.inferers.streaming.slab_memory_bytes`) and one batch of tiles through the
  network (input, activations, logits);
- **restore**: the image, the uint8 labels on the network grid, the two probability maps and
  the image copy of one, and two uint8 label arrays on the input grid (canonical and
  reoriented, or reoriented and its image).

A case is planned twice: before the coarse pass for the coarse volume (or, without one, for the
whole grid), then for the box the fine pass tiles, which the coarse pass has just found.

Network activations are measured, not guessed: the bundle records
:func:`~edgepanc.networks.activation.network_activation_bytes_per_voxel` (the largest total size
of intermediate tensors alive at once during one forward pass, per input voxel); the planner
scales it to the patch and multiplies by ``ACTIVATION_SAFETY`` to cover convolution workspaces
and allocator slack. OpenVINO's CPU plugin holds more than that (its own intermediate buffers,
sized at the first inference of each batch shape, and a fixed scratch); for it the planner
counts :data:`OPENVINO_ENGINE`, the bound of its measured resident memory after compiling and
one inference (docs/measurements/openvino_quantize.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from edgepanc.errors import BudgetError

FLOAT32 = 4
UINT8 = 1
NUM_CLASSES = 3
ACTIVATION_SAFETY = 2.0
MAX_AUTO_TILE_BATCH = 8


@dataclass(frozen=True)
class EngineMemory:
    """What an inference engine holds for one batch of tiles beyond its compiled model:
    ``factor`` x the network's measured activations for ``tile_batch + extra_tiles`` tiles,
    plus ``fixed_bytes``.

    Example: ``OPENVINO_ENGINE.batch_bytes(2, 65536, 149.0)`` -> ``103_883_776``.
    """

    factor: float
    extra_tiles: int = 0
    fixed_bytes: int = 0
    max_auto_batch: int = MAX_AUTO_TILE_BATCH  # the largest batch ``auto`` plans for it
    unbudgeted_batch: int = 2  # ``auto``'s batch when no memory budget is given
    # What each member of an ensemble beyond the first holds (None: as much as the first).
    extra_member: EngineMemory | None = None

    def batch_bytes(self, tile_batch: int, tile_voxels: int, activation_per_voxel: float) -> int:
        per_tile = int(self.factor * activation_per_voxel * tile_voxels)
        return per_tile * (tile_batch + self.extra_tiles) + self.fixed_bytes

    def members_bytes(
        self, members: int, tile_batch: int, tile_voxels: int, activation_per_voxel: float
    ) -> int:
        """:meth:`batch_bytes` for the first of ``members`` models and ``extra_member``'s for
        each other one."""
        first = self.batch_bytes(tile_batch, tile_voxels, activation_per_voxel)
        other = (self.extra_member or self).batch_bytes(
            tile_batch, tile_voxels, activation_per_voxel
        )
        return first + (members - 1) * other


# Every engine but OpenVINO: the measured activations with the safety factor.
DEFAULT_ENGINE = EngineMemory(ACTIVATION_SAFETY)
# OpenVINO: the bound over its resident memory measured for the tiny, cpu and default presets in
# fp32, bf16 and INT8 at batches 1 to 4 (docs/measurements/openvino_quantize.md).
# Batches of 1 to 4 were measured; at 8 a full-size run under a tight budget held about 120 MB
# more than planned (bench/test_openvino_memory_gate.py), and 8 tiles are no faster than 4 on the
# CPUs it runs on, so auto plans at most 4.
# Without a budget it runs one tile at a time: on the 2-core Xeon one and two tiles per call took
# the same time end to end on the full phantom, and two held 18 MiB more at the coarse pass.
# Each further member of an ensemble held up to 1.6x the activations per tile plus about 18 MB
# (its compiled model and scratch), measured for the cpu preset in fp32, bf16 and INT8 with 1-3
# members at batches 1-4 and on the full phantom (docs/measurements/ensemble_cpu.md); the bound
# keeps a margin of about a third: 2.5x plus 24 MB.
OPENVINO_EXTRA_MEMBER = EngineMemory(2.5, fixed_bytes=24_000_000)
OPENVINO_ENGINE = EngineMemory(
    3.0,
    extra_tiles=1,
    fixed_bytes=16_000_000,
    max_auto_batch=4,
    unbudgeted_batch=1,
    extra_member=OPENVINO_EXTRA_MEMBER,
)
ENGINES: dict[str, EngineMemory] = {"openvino": OPENVINO_ENGINE}


@dataclass(frozen=True)
class VolumeSizes:
    """Voxel counts and input dtype size that set the data buffers of one pass: the scan's
    voxels, and ``preprocessed_voxels``, those of the network-grid volume the pass tiles (the
    coarse volume, the fine pass's box, or the whole grid); ``map_bytes``: the bytes of label
    and probability maps the pass holds per such voxel (the raw and the kept labels, and the two
    probability maps twice, for a pass that restores; the two labels alone for the coarse
    pass); ``kept_input_voxels``: the scan's voxels still held once the volume is made (the part
    the mask can reach, :meth:`~edgepanc.preprocessing.network_input.NetworkInput.release_outside`;
    None: all of them)."""

    input_voxels: int
    input_itemsize: int
    preprocessed_voxels: int
    map_bytes: int = 6 * UINT8
    kept_input_voxels: int | None = None

    @classmethod
    def from_shapes(
        cls,
        input_shape: Sequence[int],
        input_itemsize: int,
        preprocessed_shape: Sequence[int],
        map_bytes: int = 6 * UINT8,
        kept_input_voxels: int | None = None,
    ) -> VolumeSizes:
        return cls(
            math.prod(input_shape),
            input_itemsize,
            math.prod(preprocessed_shape),
            map_bytes,
            kept_input_voxels,
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes per phase on top of ``baseline``; ``peak`` is what the budget bounds."""

    baseline: int
    preprocess: int
    infer_data: int  # preprocessed volume, labels, slab
    tile_batch_bytes: int  # one batch of tiles through the network
    restore: int

    @property
    def infer(self) -> int:
        return self.infer_data + self.tile_batch_bytes

    @property
    def peak(self) -> int:
        return self.baseline + max(self.preprocess, self.infer, self.restore)

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "infer": self.infer, "peak": self.peak}


@dataclass(frozen=True)
class BudgetPlan:
    """The chosen tile batch and the estimate it was chosen by."""

    tile_batch: int
    budget: int | None
    estimate: MemoryEstimate

    def to_dict(self) -> dict[str, object]:
        return {"tile_batch": self.tile_batch, "budget": self.budget, **self.estimate.to_dict()}


def image_bytes(sizes: VolumeSizes, kept: bool = False) -> int:
    """The scan as read, or with ``kept`` the part of it still held once the volume is made."""
    voxels = sizes.input_voxels
    if kept and sizes.kept_input_voxels is not None:
        voxels = sizes.kept_input_voxels
    return voxels * sizes.input_itemsize


def preprocess_phase_bytes(sizes: VolumeSizes) -> int:
    """The larger of reading (the image twice) and resampling (the image, the float32 volume
    and its normalised copy)."""
    image = image_bytes(sizes)
    return max(2 * image, image + 2 * sizes.preprocessed_voxels * FLOAT32)


def restore_phase_bytes(sizes: VolumeSizes) -> int:
    """The image, the labels, the two probability maps and the image of one on the network
    grid, and two uint8 copies on the input grid (measuring then needs only the mask)."""
    maps = 4 * sizes.preprocessed_voxels * UINT8 + 2 * sizes.input_voxels * UINT8
    return image_bytes(sizes, kept=True) + maps


def tile_batch_bytes(
    tile_batch: int,
    patch_size: Sequence[int],
    activation_per_voxel: float,
    engine: str | None = None,
    members: int = 1,
) -> int:
    """One batch of tiles: the tiler's buffers plus what the ``engine`` (a predictor's name)
    holds for the network's activations (:data:`ENGINES`, else the safety factor), for each
    member of an ensemble (each member's engine keeps its own buffers)."""
    from edgepanc.inferers.streaming import tile_batch_memory_bytes

    memory = ENGINES.get(engine or "", DEFAULT_ENGINE)
    network = memory.members_bytes(members, tile_batch, math.prod(patch_size), activation_per_voxel)
    # the input batch, the logits and the softmax temporaries
    buffers = tile_batch_memory_bytes(patch_size, tile_batch, NUM_CLASSES, 0)
    if members > 1:
        # the ensemble's running sum of probabilities and one member's softmax beside it
        buffers += 2 * tile_batch * NUM_CLASSES * math.prod(patch_size) * FLOAT32
    return buffers + network


def estimate_memory(
    baseline: int,
    sizes: VolumeSizes,
    slab_bytes: int,
    patch_size: Sequence[int],
    activation_per_voxel: float,
    tile_batch: int,
    engine: str | None = None,
    members: int = 1,
) -> MemoryEstimate:
    """Peak-memory estimate for one case at a given tile batch (``members``: of an ensemble)."""
    # the image, the volume, its label and probability maps, the slab
    infer_data = (
        image_bytes(sizes, kept=True)
        + sizes.preprocessed_voxels * (FLOAT32 + sizes.map_bytes)
        + slab_bytes
    )
    return MemoryEstimate(
        baseline=baseline,
        preprocess=preprocess_phase_bytes(sizes),
        infer_data=infer_data,
        tile_batch_bytes=tile_batch_bytes(
            tile_batch, patch_size, activation_per_voxel, engine, members
        ),
        restore=restore_phase_bytes(sizes),
    )


def plan_tile_batch(
    budget: int | None,
    baseline: int,
    sizes: VolumeSizes,
    slab_bytes: int,
    patch_size: Sequence[int],
    activation_per_voxel: float,
    requested_tile_batch: int | None,
    source: str = "input",
    engine: str | None = None,
    members: int = 1,
) -> BudgetPlan:
    """The largest tile batch (up to the request, or ``MAX_AUTO_TILE_BATCH`` for auto) in budget.

    Raises :class:`BudgetError` naming the smallest budget that would work when even one tile
    at a time does not fit. Without a budget: the requested batch, or the engine's
    ``unbudgeted_batch`` for auto (2; OpenVINO 1). ``members``: the models of an ensemble,
    each with its engine's buffers.
    """

    def estimate(batch: int) -> MemoryEstimate:
        return estimate_memory(
            baseline, sizes, slab_bytes, patch_size, activation_per_voxel, batch, engine, members
        )

    memory = ENGINES.get(engine or "", DEFAULT_ENGINE)
    ceiling = requested_tile_batch or memory.max_auto_batch
    if budget is None:
        batch = requested_tile_batch or memory.unbudgeted_batch
        return BudgetPlan(batch, None, estimate(batch))
    smallest = estimate(1)
    if smallest.peak > budget:
        raise BudgetError(
            f"{source}: memory budget {_fmt(budget)} is too small; this case needs at least "
            f"{_fmt(smallest.peak)} with one tile at a time (process baseline "
            f"{_fmt(baseline)}, preprocessing {_fmt(smallest.preprocess)}, inference "
            f"{_fmt(smallest.infer)}, restore {_fmt(smallest.restore)})"
        )
    batch = 1
    while batch < ceiling and estimate(batch + 1).peak <= budget:
        batch += 1
    return BudgetPlan(batch, budget, estimate(batch))


def _fmt(n_bytes: int) -> str:
    # Budgets are given in SI units ("1.5GB"), so answer in the same units. Rounded up: a
    # minimum printed here must be enough when passed back as --memory-budget.
    if n_bytes >= 1e8:
        return f"{math.ceil(n_bytes / 1e7) / 100:.2f} GB"
    return f"{math.ceil(n_bytes / 1e6)} MB"
