"""Whole-volume and streaming sliding windows: same labels, regions, batching, classification."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from edgepanc.inferers.sliding_window import (
    BatchPolicy,
    sliding_window_inference,
)
from edgepanc.inferers.streaming import (
    SlabAccumulator,
    slab_memory_bytes,
    streaming_sliding_window_inference,
    whole_volume_memory_bytes,
)
from edgepanc.inferers.tiling import gaussian_importance_map

PATCH = (16, 16, 16)


class FieldPredictor:
    """Deterministic per-voxel logits from the input (and its tile position via the batch size).

    Per-voxel functions make every tile batch size give bit-identical outputs, so any difference
    between two runs comes from the stitching alone.
    """

    name, precision, device = "field", "fp32", "cpu"

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batch_sizes.append(len(batch))
        seg = np.concatenate([0.3 - batch, batch, np.sin(4 * batch)], axis=1)
        cls = np.stack(
            [
                batch.mean(axis=(1, 2, 3, 4)),
                batch.std(axis=(1, 2, 3, 4)),
                batch.max(axis=(1, 2, 3, 4)),
            ],
            axis=1,
        )
        return seg.astype(np.float32), cls.astype(np.float32)


def phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A bright ellipsoid with a brighter blob inside, plus noise: CT-like after normalisation."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    organ = sum((g / 0.6) ** 2 for g in grid) < 1
    lesion = sum(((g - 0.15) / 0.2) ** 2 for g in grid) < 1
    volume = -1.0 + 1.5 * organ + 1.0 * lesion + 0.3 * rng.standard_normal(shape)
    return volume.astype(np.float32)


def tiny_predictor():
    from edgepanc.backends.torch_backend import TorchPredictor
    from edgepanc.networks import build_network

    torch.manual_seed(0)
    return TorchPredictor(build_network("tiny"), device="cpu", precision="fp32")


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    a, b = a == label, b == label
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


CASES = [
    # shape, step, tile_batch, region
    ((40, 37, 29), 0.5, 1, None),
    ((40, 37, 29), 0.25, 3, None),
    ((10, 50, 20), 0.5, 3, None),  # z smaller than the patch: padded
    ((45, 40, 33), 0.5, 2, (slice(5, 38), slice(3, 14), slice(0, 33))),  # y box smaller than patch
    ((33, 33, 33), 0.25, 1, (slice(1, 30), slice(2, 31), slice(4, 28))),
]


@pytest.mark.parametrize("shape,step,tile_batch,region", CASES)
def test_streaming_matches_whole_volume_exactly(shape, step, tile_batch, region):
    volume = phantom(shape)
    whole = sliding_window_inference(
        volume, FieldPredictor(), PATCH, step, tile_batch, region=region
    )
    streamed = streaming_sliding_window_inference(
        volume, FieldPredictor(), PATCH, step, tile_batch, region=region
    )
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    np.testing.assert_array_equal(streamed.tile_cls_logits, whole.tile_cls_logits)
    assert streamed.tiles == whole.tiles
    assert whole.labels.shape == shape and whole.labels.dtype == np.uint8
    assert len(np.unique(whole.labels)) == 3  # the phantom exercises every class


@pytest.mark.parametrize("shape,step,tile_batch,region", CASES)
def test_region_probabilities_are_the_softmax_of_the_blended_logits(
    shape, step, tile_batch, region
):
    volume = phantom(shape)
    whole = sliding_window_inference(
        volume, FieldPredictor(), PATCH, step, tile_batch, region=region,
        keep_logits=True, keep_probabilities=True,
    )  # fmt: skip
    streamed = streaming_sliding_window_inference(
        volume, FieldPredictor(), PATCH, step, tile_batch, region=region, keep_probabilities=True
    )
    assert whole.probabilities is not None and streamed.probabilities is not None
    # the ring of the stream holds the same sums as the whole-volume stitch, emitted row by row
    np.testing.assert_array_equal(streamed.probabilities.values, whole.probabilities.values)
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    box = whole.probabilities.box
    assert streamed.probabilities.box == box
    assert box == tuple(slice(0, s) for s in shape) if region is None else True
    logits = whole.logits[(slice(None), *box)].astype(np.float64)
    softmax = np.exp(logits - logits.max(axis=0))
    softmax /= softmax.sum(axis=0)
    # 1/255 steps, rounded: within half a step of the exact probabilities (plus float32 slack)
    assert np.abs(whole.probabilities.values[0] - 255 * (1 - softmax[0])).max() <= 0.51
    assert np.abs(whole.probabilities.values[1] - 255 * softmax[2]).max() <= 0.51
    # where the labels say lesion the lesion is the likeliest class, so P(label >= 1) > 1/2 there
    inside = whole.labels[box] == 2
    assert inside.any() and (whole.probabilities.values[0][inside] > 127).all()


def test_region_probabilities_refuse_a_mismatched_box():
    from edgepanc.inferers.probabilities import RegionProbabilities

    box = (slice(0, 4), slice(2, 5), slice(1, 3))
    RegionProbabilities(np.zeros((2, 4, 3, 2), np.uint8), box)
    with pytest.raises(ValueError, match=r"uint8 \[2, 4, 3, 2\]"):
        RegionProbabilities(np.zeros((2, 4, 3, 3), np.uint8), box)
    with pytest.raises(ValueError, match="uint8"):
        RegionProbabilities(np.zeros((2, 4, 3, 2), np.float32), box)


def test_streaming_matches_whole_volume_on_random_tiny_network():
    volume = phantom((36, 40, 24), seed=1)
    region = (slice(2, 36), slice(0, 40), slice(3, 21))
    whole = sliding_window_inference(volume, tiny_predictor(), PATCH, 0.5, 2, region=region)
    streamed = streaming_sliding_window_inference(
        volume, tiny_predictor(), PATCH, 0.5, 2, region=region
    )
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    assert len(np.unique(whole.labels)) > 1
    # a different batch size only changes float rounding inside the network
    rebatched = streaming_sliding_window_inference(
        volume, tiny_predictor(), PATCH, 0.5, 3, region=region
    )
    for label in (0, 1, 2):
        assert dice(rebatched.labels, whole.labels, label) >= 0.999


def test_region_is_tiled_with_the_whole_volume_tiles():
    volume = phantom((40, 40, 40))
    region = (slice(8, 30), slice(10, 33), slice(5, 40))
    whole = streaming_sliding_window_inference(volume, tiny_predictor(), PATCH)
    boxed = streaming_sliding_window_inference(volume, tiny_predictor(), PATCH, region=region)
    # the box's tiles are a subset of the whole-volume tiles, from the last one starting at or
    # before the box to the first one ending at or after it, on every axis
    assert set(boxed.tiles) < set(whole.tiles)
    starts = np.array(boxed.tiles)
    assert (starts.min(axis=0) <= [8, 10, 5]).all()
    assert ((starts + PATCH).max(axis=0) >= [30, 33, 40]).all()
    covered = np.zeros(volume.shape, dtype=bool)
    for corner in boxed.tiles:
        covered[tuple(slice(c, c + p) for c, p in zip(corner, PATCH, strict=True))] = True
    assert not boxed.labels[~covered].any()  # nothing outside the tiles is labelled
    # wherever a voxel's every whole-volume tile was run, the labels are the whole volume's
    complete = np.zeros(volume.shape, dtype=bool)
    missing = np.zeros(volume.shape, dtype=bool)
    for corner in whole.tiles:
        window = tuple(slice(c, c + p) for c, p in zip(corner, PATCH, strict=True))
        (complete if corner in set(boxed.tiles) else missing)[window] = True
    exact = complete & ~missing
    assert exact[region].mean() > 0.2
    np.testing.assert_array_equal(boxed.labels[exact], whole.labels[exact])


def test_keep_logits_returns_weighted_mean():
    class Constant:
        name, precision, device = "constant", "fp32", "cpu"

        def __call__(self, batch):
            seg = np.empty((len(batch), 3, *PATCH), dtype=np.float32)
            seg[:] = np.array([1.0, -2.0, 0.5], dtype=np.float32)[:, None, None, None]
            return seg, np.zeros((len(batch), 3), dtype=np.float32)

    result = sliding_window_inference(
        phantom((30, 20, 20)), Constant(), PATCH, 0.5, keep_logits=True
    )
    # a weighted mean of one constant is that constant, whatever the overlap
    np.testing.assert_allclose(result.logits[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(result.logits[1], -2.0, rtol=1e-5)
    assert not result.labels.any()


def test_keep_logits_labels_are_their_argmax():
    result = sliding_window_inference(
        phantom((24, 30, 20)), FieldPredictor(), PATCH, keep_logits=True
    )
    np.testing.assert_array_equal(result.logits.argmax(axis=0), result.labels)


def test_streaming_refuses_keep_logits():
    with pytest.raises(ValueError, match="keeps no whole-volume logits"):
        streaming_sliding_window_inference(
            phantom((16, 16, 16)), FieldPredictor(), PATCH, keep_logits=True
        )


def test_batch_policy_can_shrink_between_batches():
    volume = phantom((40, 40, 24))
    policy = BatchPolicy(tile_batch=4)
    calls = []

    def back_off():
        calls.append(policy.tile_batch)
        policy.tile_batch = max(1, policy.tile_batch - 1)

    predictor = FieldPredictor()
    result = streaming_sliding_window_inference(
        volume, predictor, PATCH, 0.5, policy, between_batches=back_off
    )
    assert predictor.batch_sizes[:4] == [4, 3, 2, 1]
    assert sum(predictor.batch_sizes) == len(result.tiles)
    assert len(calls) == len(predictor.batch_sizes) - 1  # not after the last batch
    fixed = streaming_sliding_window_inference(volume, FieldPredictor(), PATCH, 0.5, 1)
    np.testing.assert_array_equal(result.labels, fixed.labels)


def test_both_inferers_report_their_importance_map():
    volume = phantom((20, 20, 20))
    whole = sliding_window_inference(volume, FieldPredictor(), PATCH, 0.5)
    streamed = streaming_sliding_window_inference(volume, FieldPredictor(), PATCH, 0.5)
    np.testing.assert_array_equal(whole.importance, gaussian_importance_map(PATCH))
    np.testing.assert_array_equal(streamed.importance, gaussian_importance_map(PATCH))


def test_slab_accumulator_refuses_tiles_out_of_z_order():
    out = np.zeros((32, 16, 16), dtype=np.uint8)
    acc = SlabAccumulator((32, 16, 16), PATCH, 3, out)
    tile = np.zeros((3, *PATCH), dtype=np.float32)
    acc.add((0, 0, 0), tile)
    acc.add((8, 0, 0), tile)  # rows 0..8 are final now and emitted
    with pytest.raises(ValueError, match="z-major"):
        acc.add((0, 0, 0), tile)


def test_slab_accumulator_refuses_rows_no_tile_covered():
    out = np.zeros((40, 16, 16), dtype=np.uint8)
    acc = SlabAccumulator((40, 16, 16), PATCH, 3, out)
    tile = np.zeros((3, *PATCH), dtype=np.float32)
    acc.add((0, 0, 0), tile)
    with pytest.raises(ValueError, match="never covered"):
        acc.add((24, 0, 0), tile)  # rows 16..24 would silently be background


def test_streaming_holds_a_slab_not_the_volume():
    shape = (96, 64, 64)
    volume = phantom(shape)
    estimate = slab_memory_bytes(shape, PATCH, 0.5, keep_probabilities=False)
    soft_estimate = slab_memory_bytes(shape, PATCH, 0.5, keep_probabilities=True)
    whole_estimate = whole_volume_memory_bytes(shape)
    assert estimate * 4 < whole_estimate
    assert estimate < soft_estimate < whole_estimate / 2

    def traced_peak(infer, **options) -> int:
        tracemalloc.start()
        try:
            infer(volume, FieldPredictor(), PATCH, 0.5, 4, **options)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    labels_bytes = volume.size  # uint8 output
    batch_bytes = 4 * 16**3 * 4 * 8  # input, logits and softmax temporaries of one batch, generous
    streaming_peak = traced_peak(streaming_sliding_window_inference)
    assert streaming_peak <= estimate + labels_bytes + batch_bytes
    # the two uint8 probability maps of the box (here the whole volume) come on top
    soft_peak = traced_peak(streaming_sliding_window_inference, keep_probabilities=True)
    assert streaming_peak < soft_peak <= soft_estimate + 3 * labels_bytes + batch_bytes
    assert traced_peak(sliding_window_inference) > 3 * volume.nbytes  # [3, Z, Y, X] float32 logits
