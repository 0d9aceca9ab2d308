"""The memory planner counts what OpenVINO holds for a batch of tiles, measured from outside."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from edgepanc.runtime.budget import (
    ACTIVATION_SAFETY,
    OPENVINO_ENGINE,
    VolumeSizes,
    plan_tile_batch,
    tile_batch_bytes,
)

pytest.importorskip("openvino")
pytest.importorskip("nncf")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "openvino_memory.py"


def test_openvino_plans_its_engine_and_the_others_the_safety_factor():
    patch, activation = (32, 64, 64), 149.0
    voxels = math.prod(patch)
    plain = tile_batch_bytes(2, patch, activation)
    openvino = tile_batch_bytes(2, patch, activation, engine="openvino")
    assert openvino - plain == OPENVINO_ENGINE.batch_bytes(2, voxels, activation) - 2 * int(
        ACTIVATION_SAFETY * activation * voxels
    )
    assert tile_batch_bytes(2, patch, activation, engine="onnxruntime") == plain
    # under one budget OpenVINO gets no more tiles than the engines that hold less
    args = dict(
        baseline=300_000_000,
        sizes=VolumeSizes.from_shapes((512, 512, 300), 2, (150, 300, 300)),
        slab_bytes=50_000_000,
        patch_size=patch,
        activation_per_voxel=activation,
        requested_tile_batch=None,
    )
    budget = 1_200_000_000
    assert (
        plan_tile_batch(budget, engine="openvino", **args).tile_batch
        <= plan_tile_batch(budget, **args).tile_batch
    )
    assert plan_tile_batch(budget, engine="openvino", **args).estimate.peak <= budget


def test_measured_openvino_buffers_stay_within_the_plan(tmp_path):
    """RSS after compiling and one batch minus RSS before, in a fresh process, for every
    precision, one model and an ensemble of two: never more than the planner counts."""
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "tiny", "--patch", "16x32x32",
         "--batches", "1", "2", "--members", "1", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, encoding="utf-8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(out.read_text())
    activation = measured["activation_bytes_per_voxel"]
    assert {row["precision"] for row in measured["rows"]} >= {"fp32", "int8"}
    assert {row["members"] for row in measured["rows"]} == {1, 2}
    for row in measured["rows"]:
        inference = row["engine_bytes"] - row["compile_bytes"]
        planned = OPENVINO_ENGINE.members_bytes(
            row["members"], row["batch"], 16 * 32 * 32, activation
        )
        assert 0 < inference <= planned, row
