"""Whole-volume sliding-window inference: the plain reference stitch.

Tiles laid out by :func:`plan_sliding_window` are predicted in batches; each tile's
logits are weighted by the importance map and summed into logits for the whole volume, then
divided by the summed weights and arg-maxed. It keeps ``[C, Z, Y, X]`` float32 logits in memory,
which is what the streaming inferer (:mod:`edgepanc.inferers.streaming`) avoids. This module also
holds what both inferers share: the window plan and the batch loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from edgepanc.backends.base import Predictor
from edgepanc.inferers.probabilities import RegionProbabilities, region_probability_bytes
from edgepanc.inferers.tiling import (
    Corner,
    Region,
    compute_steps_for_sliding_window,
    constant_importance_map,
    covering_steps,
    gaussian_importance_map,
    padding_for,
    tile_window,
)

Importance = Literal["gaussian", "constant"]


@dataclass
class BatchPolicy:
    """How many tiles go to the predictor at once; may be changed while a run is in progress.

    The inferers read ``tile_batch`` before every batch, so a ``between_batches`` callback (thermal
    back-off, memory pressure) can shrink or grow it mid-run.
    """

    tile_batch: int = 1

    def next_batch_size(self) -> int:
        if int(self.tile_batch) < 1:
            raise ValueError(f"tile_batch must be at least 1, got {self.tile_batch}")
        return int(self.tile_batch)


@dataclass
class SlidingWindowResult:
    """What a sliding-window pass produces.

    ``labels``: uint8 (z, y, x) of the input's shape, argmax of the blended logits (0 outside the
    region). ``tile_cls_logits``: ``[T, S]`` subtype logits per tile. ``tiles``: tile start corners in the input
    volume's voxel coordinates (negative on an axis padded because it was smaller than the patch).
    ``logits``: blended ``[C, z, y, x]`` float32 logits when asked for (whole-volume only).
    ``probabilities``: the soft whole-pancreas and lesion maps of the tiled box when asked for
    (:class:`~edgepanc.inferers.probabilities.RegionProbabilities`). ``importance``: the
    per-voxel tile weights the pass blended with (patch-shaped).
    """

    labels: np.ndarray
    tile_cls_logits: np.ndarray
    tiles: list[Corner]
    logits: np.ndarray | None = None
    probabilities: RegionProbabilities | None = None
    importance: np.ndarray | None = None


@dataclass(frozen=True)
class WindowPlan:
    """Geometry of one sliding-window pass over ``region`` of a volume.

    Tiles are laid out over the region padded up to the patch size (``padded_shape``);
    ``pad_before`` is where the region starts inside that padded frame and ``tiles`` are corners
    in the padded frame, z-major.
    """

    volume_shape: tuple[int, int, int]
    region: Region
    patch_size: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    tiles: list[Corner] = field(repr=False)

    @property
    def region_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.region)  # type: ignore[return-value]

    @property
    def region_start(self) -> tuple[int, int, int]:
        return tuple(s.start for s in self.region)  # type: ignore[return-value]

    def volume_corner(self, padded_corner: Corner) -> Corner:
        """A tile corner in the padded frame mapped to the input volume's voxel coordinates."""
        return tuple(  # type: ignore[return-value]
            c - p + r
            for c, p, r in zip(padded_corner, self.pad_before, self.region_start, strict=True)
        )


def plan_sliding_window(
    volume_shape: Sequence[int],
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
    region: Region | None = None,
) -> WindowPlan:
    """Lay out the tiles for ``region`` (default: the whole volume) of a ``volume_shape`` volume.

    A region is tiled with the whole-volume plan's own tiles (:func:`covering_steps` per axis),
    not with tiles spread afresh over the box: the plan's region grows to the union of those
    tiles, and inside it the labels equal a whole-volume pass's wherever the same tiles cover a
    voxel, which is what makes coarse-to-fine agree with whole-volume tiling
    (docs/measurements/coarse_to_fine.md).

    Example: ``plan_sliding_window((40, 48, 56), (16, 16, 16), 0.5).tiles[:2]`` ->
    ``[(0, 0, 0), (0, 0, 8)]``.
    """
    if len(volume_shape) != 3 or len(patch_size) != 3:
        raise ValueError(
            f"expected a 3D volume and patch, got {list(volume_shape)} and {list(patch_size)}"
        )
    volume_shape = tuple(int(s) for s in volume_shape)
    patch = tuple(int(p) for p in patch_size)
    pads = padding_for(volume_shape, patch)
    frame = tuple(
        size + before + after for size, (before, after) in zip(volume_shape, pads, strict=True)
    )
    steps = compute_steps_for_sliding_window(frame, patch, step_fraction)
    requested = _resolve_region(region, volume_shape)
    chosen, resolved, pad_before = [], [], []
    for axis_steps, p, (before, _), size, sl in zip(
        steps, patch, pads, volume_shape, requested, strict=True
    ):
        axis = covering_steps(axis_steps, p, sl.start + before, sl.stop + before)
        start, stop = max(axis[0] - before, 0), min(axis[-1] + p - before, size)
        resolved.append(slice(start, stop))
        pad_before.append(start + before - axis[0])
        chosen.append([s - axis[0] for s in axis])
    return WindowPlan(
        volume_shape=volume_shape,  # type: ignore[arg-type]
        region=tuple(resolved),  # type: ignore[arg-type]
        patch_size=patch,  # type: ignore[arg-type]
        pad_before=tuple(pad_before),  # type: ignore[arg-type]
        padded_shape=tuple(axis[-1] + p for axis, p in zip(chosen, patch, strict=True)),  # type: ignore[arg-type]
        tiles=[(int(z), int(y), int(x)) for z, y, x in itertools.product(*chosen)],
    )


def frame_volume(volume: np.ndarray, plan: WindowPlan) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The plan's tile frame filled from ``volume`` (zeros where it reaches past the volume).

    Returns the frame (``volume[plan.region]`` itself when the two coincide) and the slices of
    the region inside it.
    """
    crop = tuple(
        slice(before, before + s.stop - s.start)
        for before, s in zip(plan.pad_before, plan.region, strict=True)
    )
    source = volume[plan.region]
    if source.shape == plan.padded_shape:
        return source, crop
    frame = np.zeros(plan.padded_shape, dtype=volume.dtype)  # the constant the tiles pad with
    frame[crop] = source
    return frame, crop


def _resolve_region(region: Region | None, shape: tuple[int, ...]) -> Region:
    if region is None:
        return tuple(slice(0, s) for s in shape)  # type: ignore[return-value]
    if len(region) != 3:
        raise ValueError(f"region must have three slices, got {region!r}")
    resolved = []
    for axis, (sl, size) in enumerate(zip(region, shape, strict=True)):
        start, stop, step = sl.indices(size)
        if step != 1 or stop <= start:
            raise ValueError(f"region slice on axis {axis} must be non-empty with step 1: {sl!r}")
        resolved.append(slice(start, stop))
    return tuple(resolved)  # type: ignore[return-value]


def importance_map(patch_size: Sequence[int], importance: Importance | str) -> np.ndarray:
    """The blending weights named ``importance`` ("gaussian" or "constant"), read-only float32."""
    if importance == "gaussian":
        return gaussian_importance_map(patch_size)
    if importance == "constant":
        return constant_importance_map(patch_size)
    raise ValueError(f"importance must be 'gaussian' or 'constant', got {importance!r}")


class TileSink(Protocol):
    """Receives each tile's importance-weighted logits, in plan order."""

    def add(self, corner: Corner, weighted_logits: np.ndarray) -> None: ...


TileReader = Callable[[Corner, np.ndarray], None]


def predict_tiles(
    read_tile: TileReader,
    plan: WindowPlan,
    predictor: Predictor,
    weights: np.ndarray,
    sink: Callable[[int], TileSink],
    policy: BatchPolicy,
    between_batches: Callable[[], None] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Run every tile of ``plan`` through ``predictor`` and hand weighted logits to a sink.

    ``read_tile(corner, out)`` fills ``out`` (one patch) with the input at a padded-frame corner.
    ``sink(num_classes)`` is called once, after the first batch tells how many classes there are.
    Returns the per-tile classification logits ``[T, S]``.
    """
    tiles = plan.tiles
    patch = plan.patch_size
    cls_rows: list[np.ndarray] = []
    batch_buffer = np.empty((0, 1, *patch), dtype=np.float32)
    target: TileSink | None = None
    done = 0
    with tqdm(total=len(tiles), disable=not progress, unit="tile", desc="sliding window") as bar:
        while done < len(tiles):
            size = min(policy.next_batch_size(), len(tiles) - done)
            if batch_buffer.shape[0] < size:
                # Grown only when the policy asks for more tiles than ever before: reused otherwise.
                batch_buffer = np.empty((size, 1, *patch), dtype=np.float32)
            batch = batch_buffer[:size]
            corners = tiles[done : done + size]
            for i, corner in enumerate(corners):
                read_tile(corner, batch[i, 0])
            seg, cls = predictor(batch)
            seg, cls = _check_outputs(seg, cls, size, patch)
            if target is None:
                target = sink(seg.shape[1])
            for i, corner in enumerate(corners):
                np.multiply(seg[i], weights, out=seg[i])  # in place: no per-tile temporaries
                target.add(corner, seg[i])
            cls_rows.append(cls)
            done += size
            bar.update(size)
            if between_batches is not None and done < len(tiles):
                between_batches()
    return np.concatenate(cls_rows, axis=0)


def _check_outputs(
    seg: np.ndarray, cls: np.ndarray, size: int, patch: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    seg = np.asarray(seg)
    cls = np.asarray(cls, dtype=np.float32)
    if seg.ndim != 5 or seg.shape[0] != size or tuple(seg.shape[2:]) != patch:
        raise ValueError(
            f"predictor returned segmentation logits {list(seg.shape)}, expected [{size}, C, {', '.join(map(str, patch))}]"
        )
    if cls.ndim != 2 or cls.shape[0] != size:
        raise ValueError(f"predictor returned class logits {list(cls.shape)}, expected [{size}, S]")
    if seg.dtype != np.float32 or not seg.flags.writeable or not seg.flags.c_contiguous:
        seg = np.array(seg, dtype=np.float32, order="C")
    return seg, cls


class _VolumeAccumulator:
    """Whole-volume sums of weighted logits and of weights in the padded frame."""

    def __init__(
        self,
        padded_shape: tuple[int, ...],
        patch: tuple[int, ...],
        num_classes: int,
        weights: np.ndarray,
    ) -> None:
        self.logits = np.zeros((num_classes, *padded_shape), dtype=np.float32)
        self.weight_sum = np.zeros(padded_shape, dtype=np.float32)
        self.patch = patch
        self.weights = weights

    def add(self, corner: Corner, weighted_logits: np.ndarray) -> None:
        window = tile_window(corner, self.patch)
        self.logits[(slice(None), *window)] += weighted_logits
        self.weight_sum[window] += self.weights


def sliding_window_inference(
    volume: np.ndarray,
    predictor: Predictor,
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
    tile_batch: int | BatchPolicy = 1,
    importance: Importance = "gaussian",
    keep_logits: bool = False,
    progress: bool = False,
    between_batches: Callable[[], None] | None = None,
    region: Region | None = None,
    keep_probabilities: bool = False,
) -> SlidingWindowResult:
    """Predict ``volume`` (z, y, x) tile by tile and stitch whole-volume logits (the baseline).

    ``tile_batch`` is a fixed batch size or a :class:`BatchPolicy` whose ``tile_batch`` may change
    between batches; ``between_batches`` runs after every batch but the last. ``region`` restricts
    tiling to a box (labels are 0 outside it). ``keep_logits`` returns the blended logits of the
    region (0 elsewhere) in ``result.logits``; ``keep_probabilities`` the region's soft maps in
    ``result.probabilities``.
    """
    volume = _check_volume(volume)
    policy = tile_batch if isinstance(tile_batch, BatchPolicy) else BatchPolicy(int(tile_batch))
    plan = plan_sliding_window(volume.shape, patch_size, step_fraction, region)
    weights = importance_map(plan.patch_size, importance)
    padded, crop = frame_volume(volume, plan)
    patch = plan.patch_size

    def read_tile(corner: Corner, out: np.ndarray) -> None:
        out[...] = padded[tile_window(corner, patch)]

    holder: list[_VolumeAccumulator] = []

    def make_sink(num_classes: int) -> _VolumeAccumulator:
        holder.append(_VolumeAccumulator(plan.padded_shape, patch, num_classes, weights))
        return holder[0]

    cls_logits = predict_tiles(
        read_tile, plan, predictor, weights, make_sink, policy, between_batches, progress
    )
    acc = holder[0]
    region_logits = acc.logits[(slice(None), *crop)]
    labels = np.zeros(volume.shape, dtype=np.uint8)
    # Dividing by the positive per-voxel weight sum cannot change the argmax, so labels come from
    # the raw sums; the division is only paid for when the caller wants the logits themselves.
    labels[plan.region] = region_logits.argmax(axis=0)
    probabilities = None
    if keep_probabilities:
        probabilities = RegionProbabilities(
            region_probability_bytes(region_logits, acc.weight_sum[crop]), plan.region
        )
    logits = None
    if keep_logits:
        np.divide(region_logits, acc.weight_sum[crop], out=region_logits)
        logits = np.zeros((region_logits.shape[0], *volume.shape), dtype=np.float32)
        logits[(slice(None), *plan.region)] = region_logits
    return SlidingWindowResult(
        labels=labels,
        tile_cls_logits=cls_logits,
        tiles=[plan.volume_corner(c) for c in plan.tiles],
        logits=logits,
        probabilities=probabilities,
        importance=weights,
    )


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume (z, y, x), got shape {list(volume.shape)}")
    if volume.dtype != np.float32:
        volume = volume.astype(np.float32)
    return volume


__all__ = [
    "BatchPolicy",
    "SlidingWindowResult",
    "WindowPlan",
    "importance_map",
    "plan_sliding_window",
    "predict_tiles",
    "sliding_window_inference",
]
