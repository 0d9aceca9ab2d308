"""Test-time mirroring (``edgepanc run --tta``): the mean over mirrored tiles, mirrored back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepanc.inferers.mirroring import MirroredPredictor

from runtime_support import make_tiny_bundle, phantom, run_cli, write_image


class RampPredictor:
    """Ignores the tile: segmentation logits rise along x (and y for channel 1); subtype logits
    are the tile's mean, which no mirror changes. Counts its calls."""

    name, precision, device = "fake", "fp32", "cpu"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        b, _, d, h, w = batch.shape
        seg = np.zeros((b, 3, d, h, w), np.float32)
        seg[:, 0] = np.arange(w, dtype=np.float32)
        seg[:, 1] = np.arange(h, dtype=np.float32)[:, None]
        seg[:, 2] = batch[:, 0]  # follows the input: mirroring it back gives it unchanged
        cls = np.repeat(batch.mean(axis=(1, 2, 3, 4))[:, None], 3, axis=1) * [1.0, 0.0, -1.0]
        return seg, cls.astype(np.float32)


def test_mirrors_are_undone_and_averaged() -> None:
    batch = np.random.default_rng(0).standard_normal((2, 1, 3, 4, 5)).astype(np.float32)
    plain = RampPredictor()
    mirrored = MirroredPredictor(plain)
    seg, cls = mirrored(batch)
    assert mirrored.passes == 4 and plain.calls == 4
    assert (mirrored.name, mirrored.precision, mirrored.device) == ("fake", "fp32", "cpu")
    # a ramp along x seen plain and x-mirrored (mirrored back): its mean with its reverse
    assert np.allclose(seg[0, 0, 0, 0], np.full(5, 2.0))
    assert np.allclose(seg[0, 1, 0, :, 0], np.full(4, 1.5))
    np.testing.assert_allclose(seg[:, 2], batch[:, 0], rtol=1e-6)  # equivariant: unchanged
    np.testing.assert_allclose(cls, RampPredictor()(batch)[1], rtol=1e-5)
    assert seg.dtype == np.float32 and cls.dtype == np.float32


def test_one_axis_is_two_passes_and_bad_axes_are_refused() -> None:
    only_x = MirroredPredictor(RampPredictor(), ("x",))
    assert only_x.passes == 2
    seg, _ = only_x(np.zeros((1, 1, 2, 4, 5), np.float32))
    assert np.allclose(seg[0, 1, 0, :, 0], np.arange(4))  # y is not mirrored
    for axes in ((), ("w",)):
        with pytest.raises(ValueError, match="mirror axes"):
            MirroredPredictor(RampPredictor(), axes)


def test_run_with_tta_records_its_mirrors_and_is_not_taken_for_a_plain_run(
    tmp_path: Path,
) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    scan = write_image(phantom(shape_zyx=(20, 24, 28)), tmp_path / "in" / "a_0000.nii.gz")
    out = tmp_path / "out"
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--no-preview", "--tta")
    assert result.exit_code == 0, result.stderr
    mirrored = json.loads((out / "a.json").read_text())
    assert mirrored["mirror_axes"] == ["y", "x"]
    # the same command again finds the case done; without --tta it is another model's result
    again = run_cli("run", scan, "--model", bundle, "--out", out, "--no-preview", "--tta")
    assert again.exit_code == 0 and "skipped" in again.stdout
    plain = run_cli("run", scan, "--model", bundle, "--out", out, "--no-preview", "--overwrite")
    assert plain.exit_code == 0, plain.stderr
    record = json.loads((out / "a.json").read_text())
    assert record["mirror_axes"] == [] and record["model_id"] != mirrored["model_id"]
