"""Streaming sliding-window inference: only the slab of logits still in play is kept.

Tiles arrive z-major, so once the next tile starts at z = s no later tile touches rows below s:
those rows are final. :class:`SlabAccumulator` keeps the weighted logits of the live rows in a ring
buffer one patch deep, arg-maxes rows as they finish straight into the uint8 output and reuses
their memory for the rows ahead. Peak memory is ``C * patch_z * Y * X`` float32 plus the labels,
instead of ``C * Z * Y * X`` for the whole-volume stitch, and the labels are identical: the same
sums in the same order.

Tiles are read straight from the input volume (padding of axes smaller than the patch is applied
per tile), so the input is never copied whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from edgepanc.backends.base import Predictor
from edgepanc.inferers.probabilities import RegionProbabilities, region_probability_bytes
from edgepanc.inferers.sliding_window import (
    BatchPolicy,
    Importance,
    Region,
    SlidingWindowResult,
    WindowPlan,
    _check_volume,
    importance_map,
    plan_sliding_window,
    predict_tiles,
)
from edgepanc.inferers.tiling import (
    Corner,
    compute_steps_for_sliding_window,
    padding_for,
    tile_window,
)

FLOAT_BYTES = 4


class SlabAccumulator:
    """Blend z-major tiles into a ring buffer of ``patch_z`` rows and emit finished rows as labels.

    ``padded_shape`` is the frame tiles are laid out in; ``output`` is the uint8 array the labels
    go to and ``pad_before`` where it sits in the frame (the frame may extend past it where an axis
    was padded up to the patch). Call :meth:`add` for every tile in plan order, then :meth:`finish`.

    With ``probability_output`` (uint8 ``[2, *output.shape]``) the finished rows' region
    probabilities go there as well (:func:`~edgepanc.inferers.probabilities.region_probability_bytes`);
    that needs the per-voxel weight sums, so ``weights`` (the importance map every tile was
    multiplied by) is then required and a one-channel ring of them is kept.
    """

    def __init__(
        self,
        padded_shape: Sequence[int],
        patch_size: Sequence[int],
        num_classes: int,
        output: np.ndarray,
        pad_before: Sequence[int] = (0, 0, 0),
        weights: np.ndarray | None = None,
        probability_output: np.ndarray | None = None,
    ) -> None:
        self.padded_shape = tuple(int(s) for s in padded_shape)
        self.patch = tuple(int(p) for p in patch_size)
        self.pad_before = tuple(int(p) for p in pad_before)
        fits = all(
            o + p <= s
            for o, p, s in zip(output.shape, self.pad_before, self.padded_shape, strict=True)
        )
        if output.dtype != np.uint8 or output.ndim != 3 or not fits:
            raise ValueError(
                f"output must be a uint8 3D array inside the frame {list(self.padded_shape)} "
                f"at {list(self.pad_before)}, got {output.dtype} {list(output.shape)}"
            )
        self.output = output
        self.depth = self.patch[0]
        # The ring: frame row z lives at index z % depth. Rows below first_open are emitted.
        self.ring = np.zeros((num_classes, self.depth, *self.padded_shape[1:]), dtype=np.float32)
        self.probability_output = probability_output
        self.weights = weights
        self.weight_ring: np.ndarray | None = None
        if probability_output is not None:
            if probability_output.dtype != np.uint8 or probability_output.shape != (
                2,
                *output.shape,
            ):
                raise ValueError(
                    f"probability_output must be uint8 [2, {', '.join(map(str, output.shape))}], "
                    f"got {probability_output.dtype} {list(probability_output.shape)}"
                )
            if weights is None or tuple(weights.shape) != self.patch:
                raise ValueError("probability_output needs the tiles' importance map as weights")
            self.weight_ring = np.zeros((self.depth, *self.padded_shape[1:]), dtype=np.float32)
        self.first_open = 0
        self.covered_until = 0
        self._yx_crop = tuple(
            slice(p, p + s) for p, s in zip(self.pad_before[1:], output.shape[1:], strict=True)
        )

    def add(self, corner: Corner, weighted_logits: np.ndarray) -> None:
        """Add one tile's importance-weighted logits ``[C, pz, py, px]`` at ``corner``."""
        z, y, x = corner
        if z < self.first_open:
            raise ValueError(
                f"tiles must arrive in z-major order: tile at z={z} after row {self.first_open} was emitted"
            )
        # Everything below this tile's start is final: no later tile reaches back that far.
        self._emit_until(z)
        pz, py, px = self.patch
        yx = (slice(y, y + py), slice(x, x + px))
        for ring_rows, frame_rows in self._ring_segments(z, z + pz):
            tile_rows = slice(frame_rows.start - z, frame_rows.stop - z)
            self.ring[(slice(None), ring_rows, *yx)] += weighted_logits[:, tile_rows]
            if self.weight_ring is not None:
                self.weight_ring[(ring_rows, *yx)] += self.weights[tile_rows]  # type: ignore[index]
        self.covered_until = max(self.covered_until, z + pz)

    def finish(self) -> None:
        """Emit every remaining row; call once after the last tile."""
        if self.covered_until != self.padded_shape[0]:
            raise ValueError(
                f"tiles covered rows up to {self.covered_until} of {self.padded_shape[0]}"
            )
        self._emit_until(self.padded_shape[0])

    def _emit_until(self, stop: int) -> None:
        if stop <= self.first_open:
            return
        if stop > self.covered_until:
            # Rows no tile touched would silently come out as background: a plan bug.
            raise ValueError(f"rows {self.covered_until}..{stop} were never covered by a tile")
        for ring_rows, frame_rows in self._ring_segments(self.first_open, stop):
            self._emit(ring_rows, frame_rows)
            self.ring[:, ring_rows] = 0.0  # reused for rows one patch further on
            if self.weight_ring is not None:
                self.weight_ring[ring_rows] = 0.0
        self.first_open = stop

    def _emit(self, ring_rows: slice, frame_rows: slice) -> None:
        # Frame rows -> output rows, dropping z padding; y/x padding is cropped by the view.
        offset = self.pad_before[0]
        out_start = max(frame_rows.start - offset, 0)
        out_stop = min(frame_rows.stop - offset, self.output.shape[0])
        if out_stop <= out_start:
            return
        first = ring_rows.start + (out_start + offset - frame_rows.start)
        rows = slice(first, first + out_stop - out_start)
        # Labels come from the raw weighted sums: dividing by the positive weight sum of a voxel
        # cannot change its argmax, so the summed weights need no buffer at all.
        self.output[out_start:out_stop] = self.ring[(slice(None), rows, *self._yx_crop)].argmax(
            axis=0
        )
        if self.probability_output is not None and self.weight_ring is not None:
            region_probability_bytes(
                self.ring[(slice(None), rows, *self._yx_crop)],
                self.weight_ring[(rows, *self._yx_crop)],
                out=self.probability_output[:, out_start:out_stop],
            )

    def _ring_segments(self, start: int, stop: int) -> list[tuple[slice, slice]]:
        """Split frame rows [start, stop) into runs contiguous in the ring: (ring, frame) slices."""
        if stop - start > self.depth:
            raise ValueError(f"rows {start}..{stop} do not fit the slab depth {self.depth}")
        segments = []
        row = start
        while row < stop:
            ring_start = row % self.depth
            run = min(stop - row, self.depth - ring_start)
            segments.append((slice(ring_start, ring_start + run), slice(row, row + run)))
            row += run
        return segments


def streaming_sliding_window_inference(
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
    """Same result as :func:`~edgepanc.inferers.sliding_window.sliding_window_inference`, in a slab.

    Labels match the whole-volume stitch (same sums in the same order); only a ``patch_z``-deep
    slab of logits and one batch of tiles are held besides the input and the labels (and, with
    ``keep_probabilities``, two bytes per voxel of the tiled box for the region probabilities).
    ``keep_logits`` is refused: whole-volume logits are exactly what streaming avoids.
    """
    if keep_logits:
        raise ValueError(
            "streaming inference keeps no whole-volume logits; use sliding_window_inference"
        )
    volume = _check_volume(volume)
    policy = tile_batch if isinstance(tile_batch, BatchPolicy) else BatchPolicy(int(tile_batch))
    plan = plan_sliding_window(volume.shape, patch_size, step_fraction, region)
    weights = importance_map(plan.patch_size, importance)
    source = volume[plan.region]  # a view: basic slicing never copies
    labels = np.zeros(volume.shape, dtype=np.uint8)
    region_labels = labels[plan.region]
    probabilities = (
        RegionProbabilities(np.zeros((2, *region_labels.shape), dtype=np.uint8), plan.region)
        if keep_probabilities
        else None
    )
    holder: list[SlabAccumulator] = []

    def make_sink(num_classes: int) -> SlabAccumulator:
        holder.append(
            SlabAccumulator(
                plan.padded_shape,
                plan.patch_size,
                num_classes,
                region_labels,
                plan.pad_before,
                weights=weights,
                probability_output=None if probabilities is None else probabilities.values,
            )
        )
        return holder[0]

    cls_logits = predict_tiles(
        _tile_reader(source, plan),
        plan,
        predictor,
        weights,
        make_sink,
        policy,
        between_batches,
        progress,
    )
    holder[0].finish()
    return SlidingWindowResult(
        labels=labels,
        tile_cls_logits=cls_logits,
        tiles=[plan.volume_corner(c) for c in plan.tiles],
        probabilities=probabilities,
        importance=weights,
    )


def _tile_reader(source: np.ndarray, plan: WindowPlan) -> Callable[[Corner, np.ndarray], None]:
    """Read a tile at a padded-frame corner from ``source``, zero-filling the virtual padding."""
    patch = plan.patch_size
    pad_before = plan.pad_before
    padded_axes = any(p > 0 for p in pad_before) or tuple(plan.padded_shape) != source.shape

    def read(corner: Corner, out: np.ndarray) -> None:
        if not padded_axes:
            out[...] = source[tile_window(corner, patch)]
            return
        src, dst = [], []
        for c, p, before, size in zip(corner, patch, pad_before, source.shape, strict=True):
            lo, hi = max(c - before, 0), min(c - before + p, size)
            src.append(slice(lo, hi))
            dst.append(slice(lo - (c - before), hi - (c - before)))
        out[...] = 0.0  # the same constant frame_volume pads with
        out[tuple(dst)] = source[tuple(src)]

    return read


def slab_memory_bytes(
    image_size: Sequence[int],
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
    num_classes: int = 3,
    keep_probabilities: bool = True,
) -> int:
    """Bytes the streaming accumulator holds for a volume (or ROI box) of ``image_size``.

    The ring of ``num_classes x patch_z x Y x X`` float32 logits plus the temporaries of emitting
    the largest run of finished rows (int64 argmax and a strided read of the ring); with
    ``keep_probabilities`` (as the runtime runs it) also the ring of weight sums and the softmax
    temporaries of the emitted rows. The uint8 labels (``Z*Y*X`` bytes), the region probabilities
    (two bytes per voxel of the box) and the input are the caller's and are not included.
    """
    pads = padding_for(image_size, patch_size)
    frame = [int(s) + a + b for s, (a, b) in zip(image_size, pads, strict=True)]
    steps_z = compute_steps_for_sliding_window(frame, patch_size, step_fraction)[0]
    largest_emit = max([b - a for a, b in itertools.pairwise(steps_z)] + [int(patch_size[0])])
    plane = frame[1] * frame[2]
    channels = num_classes + 1 if keep_probabilities else num_classes
    ring = channels * int(patch_size[0]) * plane * FLOAT_BYTES
    # argmax (int64) and a strided read of the ring; softmax: the logits and their sum
    emit = largest_emit * plane * (8 + channels * FLOAT_BYTES)
    if keep_probabilities:
        emit += largest_emit * plane * (num_classes + 1) * FLOAT_BYTES
    return int(ring + emit)


def tile_batch_memory_bytes(
    patch_size: Sequence[int],
    tile_batch: int,
    num_classes: int = 3,
    activation_bytes_per_tile: int = 0,
) -> int:
    """Bytes one batch of ``tile_batch`` tiles costs outside the network itself.

    The float32 input batch, the returned logits and the softmax temporaries of the lesion mass
    (``num_classes + 1`` patch-sized float32 arrays per tile). Backends differ in what their
    activations cost, so the caller adds it per tile as ``activation_bytes_per_tile`` (measure it
    once, e.g. from peak RSS around one batch).
    """
    voxels = int(np.prod([int(p) for p in patch_size]))
    per_tile = voxels * FLOAT_BYTES * (1 + num_classes + num_classes + 1)
    return int(tile_batch) * (per_tile + int(activation_bytes_per_tile))


def whole_volume_memory_bytes(image_size: Sequence[int], num_classes: int = 3) -> int:
    """Bytes the whole-volume stitch holds: ``[C, Z, Y, X]`` logits, weights and argmax (int64)."""
    voxels = int(np.prod([int(s) for s in image_size]))
    return voxels * (num_classes * FLOAT_BYTES + FLOAT_BYTES + 8)


__all__ = [
    "SlabAccumulator",
    "slab_memory_bytes",
    "streaming_sliding_window_inference",
    "tile_batch_memory_bytes",
    "whole_volume_memory_bytes",
]
