"""Automatic planning: the data set's fingerprint and the device choose spacing, patch, batch and
depth where the recipe leaves them open (scripted devices: no GPU needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepanc.cli import main
from edgepanc.preprocessing.plan import (
    fit_step_shape,
    median_shape_at,
    pooling_stages,
    target_spacing_for,
)
from edgepanc.training.planning import (
    CUDA_CONTEXT_BYTES,
    GPU_MEMORY_FRACTION,
    Device,
    Fingerprint,
    plan_training,
    step_cost,
)
from edgepanc.training.recipes import resolve_train_config

from train_support import write_tiny_dataset

# 252 training CTs as the quiz has them: mostly 2.5 mm slices, some thin-slice scans.
QUIZ_LIKE = Fingerprint(
    ((2.5, 0.8, 0.8),) * 200 + ((1.0, 0.7, 0.7),) * 52, ((120, 512, 512),) * 252
)


def test_target_spacing_is_the_median_unless_the_slices_are_thick() -> None:
    assert target_spacing_for([(2.0, 1.0, 1.0), (3.0, 1.2, 1.2), (2.5, 0.8, 0.8)]) == (
        2.5,
        1.0,
        1.0,
    )
    # 5 mm slices over 0.8 mm pixels: more than 3x, so z takes its 10th percentile
    thick = [(5.0, 0.8, 0.8)] * 9 + [(1.0, 0.8, 0.8)]
    assert target_spacing_for(thick)[0] == pytest.approx(4.6)
    assert target_spacing_for(thick)[1:] == (0.8, 0.8)
    assert QUIZ_LIKE.target_spacing() == (1.0, 0.8, 0.8)  # 2.5 > 3 * 0.8


def test_depth_follows_the_patch() -> None:
    assert pooling_stages((32, 64, 64), max_stages=6) == 4  # 32 -> 16 -> 8 -> 4
    assert pooling_stages((128, 128, 128), max_stages=6) == 6
    assert pooling_stages((128, 128, 128), max_stages=5) == 5
    assert median_shape_at([(40, 100, 100)], [(2.5, 1.0, 1.0)], (2.0, 1.25, 1.25)) == (50, 80, 80)


def test_a_patch_shrinks_until_a_step_fits_and_stays_a_multiple_of_its_divisor() -> None:
    def cost(patch, batch, stages):
        return 1000.0 * batch * math.prod(patch)

    for limit in (1e9, 8e9, 80e9):
        shape = fit_step_shape((60, 200, 200), cost, limit, max_stages=6)
        assert shape.cost <= limit and shape.batch_size >= 2
        divisor = 2 ** (shape.stages - 1)
        assert all(p % divisor == 0 for p in shape.patch_size), shape
    small = fit_step_shape((60, 200, 200), cost, 1e9, max_stages=6)
    big = fit_step_shape((60, 200, 200), cost, 80e9, max_stages=6, max_batch_voxels=1e8)
    assert small.batch_size * math.prod(small.patch_size) < big.batch_size * math.prod(
        big.patch_size
    )
    assert big.batch_size * math.prod(big.patch_size) <= 1e8


def test_the_gpu_plan_for_80_and_8_gb_fits_each_memory_and_the_bigger_gpu_gets_more() -> None:
    config = resolve_train_config("d", "r", {}, recipe="gpu")
    assert set(config.planned) == {"target_spacing", "patch_size", "batch_size", "features"}
    plans = {}
    for gb in (80, 8):
        device = Device("cuda", f"{gb} GB GPU", memory_bytes=gb * 1e9)
        planned, record = plan_training(config, QUIZ_LIKE, device)
        assert planned.planned == () and planned.patch_size == tuple(record["patch_size"])
        assert record["limit"] == pytest.approx(gb * 1e9 * GPU_MEMORY_FRACTION)
        # the planner's memory arithmetic, recomputed: within the memory it was given
        features = planned.features
        cost, limit, _ = step_cost(planned, device, lambda stages, f=features: f)
        used = cost(planned.patch_size, planned.batch_size, len(planned.features))
        assert used == pytest.approx(record["step_cost"]) and CUDA_CONTEXT_BYTES < used <= limit
        divisor = 2 ** (len(planned.features) - 1)
        assert all(p % divisor == 0 for p in planned.patch_size)
        plans[gb] = planned
    voxels = {gb: c.batch_size * math.prod(c.patch_size) for gb, c in plans.items()}
    assert voxels[80] > voxels[8]
    # an 8 GB GPU still gets at least the measured step (64x128x128, batch 2: 2.68 GiB)
    assert voxels[8] >= 2 * 64 * 128 * 128
    assert plans[8].target_spacing == (1.0, 0.8, 0.8)


def test_pinned_values_win_over_the_plan() -> None:
    config = resolve_train_config(
        "d", "r", {}, recipe="gpu", assignments=["patch_size=64,128,128", "target_spacing=2,1,1"]
    )
    # a pinned patch keeps the preset's network: only the batch is left to plan
    assert set(config.planned) == {"batch_size"}
    planned, record = plan_training(config, QUIZ_LIKE, Device("cuda", "80 GB", memory_bytes=80e9))
    assert planned.patch_size == (64, 128, 128) and planned.target_spacing == (2.0, 1.0, 1.0)
    assert planned.batch_size > 2  # the batch fills what the pinned patch leaves
    assert record["planned"] == ["batch_size"] and planned.features is None
    # the measured CPU recipes pin everything: nothing is planned
    assert resolve_train_config("d", "r", {}, recipe="cpu-bf16").planned == ()


def test_a_faster_cpu_gets_a_bigger_patch_within_the_step_time() -> None:
    config = resolve_train_config("d", "r", {}, recipe="gpu", assignments=["preset=cpu"])
    sizes = {}
    for name, seconds_per_voxel in (("slow", 4e-6), ("fast", 2e-7)):
        device = Device("cpu", name, seconds_per_voxel=seconds_per_voxel)
        planned, record = plan_training(config, QUIZ_LIKE, device)
        assert planned.batch_size == 2
        if name == "fast":
            assert record["step_cost"] <= config.step_seconds
        sizes[name] = math.prod(planned.patch_size)
    assert sizes["fast"] > sizes["slow"]


def test_a_run_writes_its_plan_and_print_config_shows_it(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    run = tmp_path / "run"
    # the GPU recipe on a CPU, for the tiny network: the patch, batch and depth are planned
    args = ["train", "--data", str(data), "--out", str(run), "--recipe", "gpu"]
    args += ["--set", "preset=tiny", "--set", "target_spacing=2,1,1", "--set", "epochs=1"]
    args += ["--set", "steps_per_epoch=1", "--set", "warmup_epochs=0", "--set", "amp=false"]
    args += ["--threads", "1", "--workers", "0", "--device", "cpu", "--no-head-refit"]
    shown = CliRunner().invoke(main, [*args, "--print-config"])
    assert shown.exit_code == 0, shown.output
    assert "# plan for cpu" in shown.output
    assert "planned batch_size, features, patch_size" in shown.output
    assert "patch_size = [32, 32, 32]" in shown.output  # the smallest patch planned
    assert "features = [4, 8, 16]" in shown.output  # 32 -> 16 -> 8 -> 4, within the preset's 3
    assert not run.exists()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    plan = json.loads((run / "plan.json").read_text())
    assert plan["planning"]["planned"] == ["batch_size", "features", "patch_size"]
    assert plan["planning"]["patch_size"] == plan["patch_size"] == [32, 32, 32]
    assert plan["target_spacing"] == [2.0, 1.0, 1.0]  # pinned
    config = json.loads((run / "config.json").read_text())
    assert config["features"] == [4, 8, 16] and config["planned"] == []
    assert config["batch_size"] == plan["planning"]["batch_size"] == 2
