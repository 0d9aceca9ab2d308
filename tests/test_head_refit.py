"""The subtype head's refit on runtime tiles (``--head-refit``): tile choice, features, fit, run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgepanc.cli import main
from edgepanc.inferers.sliding_window import importance_map, plan_sliding_window
from edgepanc.networks import build_network
from edgepanc.networks.config import LESION_LABEL
from edgepanc.thermal import ThermalGuard
from edgepanc.training.config import TrainConfig
from edgepanc.training.head_refit import (
    HeadRefitConfig,
    TileFeatures,
    case_logits,
    lesion_tiles,
    refit_head,
)
from edgepanc.training.runner import run_training

from train_support import write_tiny_dataset

PATCH = (16, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_head_inputs_then_classify_is_the_forward_pass() -> None:
    torch.manual_seed(0)
    model = build_network("tiny").eval()
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        seg, cls = model(x)
        seg_again, pooled = model.head_inputs(x)
        cls_again = model.cls_head.classify(pooled)
    assert torch.equal(seg, seg_again)
    assert torch.allclose(cls, cls_again, atol=1e-6)
    assert pooled.shape == (2, model.cls_head.fc1.in_features)


def test_lesion_tiles_are_the_grid_tiles_holding_the_most_lesion() -> None:
    label = np.zeros((16, 48, 48), dtype=np.uint8)
    label[4:12, 30:40, 30:40] = LESION_LABEL
    importance = importance_map(PATCH, "gaussian")
    config = HeadRefitConfig(max_tiles_per_case=3, min_tile_share=0.0)
    corners = lesion_tiles(label, PATCH, 0.5, importance, config)
    grid = plan_sliding_window(label.shape, PATCH, 0.5).tiles
    assert len(corners) == 3 and all(c in grid for c in corners)

    # Every chosen tile holds lesion, and the first holds at least as much as any other tile.
    def mass(corner: tuple[int, ...]) -> float:
        window = tuple(slice(c, c + p) for c, p in zip(corner, PATCH, strict=True))
        return float(
            np.tensordot((label[window] == LESION_LABEL).astype(np.float32), importance, 3)
        )

    assert all(mass(c) > 0 for c in corners)
    assert mass(corners[0]) == pytest.approx(max(mass(c) for c in grid))
    strict = HeadRefitConfig(max_tiles_per_case=8, min_tile_share=0.9)
    assert lesion_tiles(label, PATCH, 0.5, importance, strict) == [corners[0]]
    assert lesion_tiles(np.zeros_like(label), PATCH, 0.5, importance, config) == []


def separable_features(cases: int = 12, tiles: int = 3, seed: int = 0) -> TileFeatures:
    """Tiles whose first three features point at the case's subtype, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    subtypes = torch.arange(cases) % 3
    case_index = torch.arange(cases).repeat_interleave(tiles)
    pooled = torch.randn(cases * tiles, 10, generator=generator)
    pooled[torch.arange(cases * tiles), subtypes[case_index]] += 3.0
    weights = torch.rand(cases * tiles, generator=generator)
    weights = weights / torch.zeros(cases).index_add(0, case_index, weights)[case_index]
    return TileFeatures(pooled, weights, case_index, subtypes)


def test_case_logits_weigh_tile_logits_as_the_runtime_does() -> None:
    features = separable_features(cases=4, tiles=2)
    head = build_network("tiny").cls_head.eval()
    head.fc1 = torch.nn.Linear(10, head.fc1.out_features)
    with torch.no_grad():
        tile_logits = head.classify(features.pooled)
        aggregated = case_logits(head, features, features.pooled)
    for case in range(4):
        rows = features.case_index == case
        expected = (features.weights[rows, None] * tile_logits[rows]).sum(dim=0)
        assert torch.allclose(aggregated[case], expected, atol=1e-6)


def test_refit_learns_the_subtypes_and_leaves_the_head_where_it_was() -> None:
    torch.manual_seed(0)
    head = build_network("tiny").cls_head
    head.fc1 = torch.nn.Linear(10, head.fc1.out_features)
    head.train()
    features = separable_features()
    rng_before = torch.random.get_rng_state()
    result = refit_head(head, features, HeadRefitConfig(steps=300, lr=1e-2))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the run's stream untouched
    assert result["loss_after"] < result["loss_before"] / 2
    assert result["train_accuracy"] == 1.0
    assert head.training  # mode restored
    # Same seed, same start: the same refit.
    torch.manual_seed(0)
    first = build_network("tiny").cls_head
    first.fc1 = torch.nn.Linear(10, first.fc1.out_features)
    second = build_network("tiny").cls_head
    second.fc1 = torch.nn.Linear(10, second.fc1.out_features)
    second.load_state_dict(first.state_dict())
    config = HeadRefitConfig(steps=20)
    refit_head(first, features, config)
    refit_head(second, features, config)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


# The CLI run below names this recipe (without one it would take this machine's); its values
# are the base of every configuration here, so the in-process runs repeat the CLI's.
RECIPE = "cpu-fp32"


TINY = {"preset": "tiny", "patch_size": PATCH, "target_spacing": (2.0, 2.0, 2.0), "epochs": 2}
TINY |= {"steps_per_epoch": 3, "warmup_epochs": 0, "time_budget": None}  # exactly 2 epochs


def tiny_refit_config(data: Path, out: Path, **changes: object) -> TrainConfig:
    from edgepanc.recipes import recipe_values

    values = recipe_values(TrainConfig, "train", RECIPE) | TINY
    run = {"data": str(data), "out": str(out), "recipe": RECIPE, "recipe_reason": "--recipe"}
    return TrainConfig(**run, **values).replace(**changes)


def read_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_with_head_refit_logs_a_validated_refit_row(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["train", "--data", str(data), "--out", str(run), "--recipe", RECIPE, "--set", "preset=tiny"]
        + ["--set", "patch_size=16,16,16", "--set", "target_spacing=2,2,2", "--set", "epochs=2"]
        + ["--set", "steps_per_epoch=3", "--set", "warmup_epochs=0", "--head-refit"],
    )
    assert result.exit_code == 0, result.output
    config = tiny_refit_config(data, run, head_refit=True)
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == config
    records = read_records(run)
    assert [r.get("phase") for r in records] == [None, None, "head_refit"]
    refit = records[-1]
    assert refit["epoch"] == 2 and refit["refit_cases"] == 6 and refit["refit_tiles"] >= 6
    for key in ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy", "confusion"):
        assert key in refit
    # The refit leaves the segmentation alone: the same masks, so the same Dice.
    assert refit["whole_dsc"] == pytest.approx(records[1]["whole_dsc"])
    assert refit["lesion_dsc"] == pytest.approx(records[1]["lesion_dsc"])
    assert refit["refit_loss_after"] < refit["refit_loss_before"]
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["state"]["head_refitted"] is True
    assert "phase" in (run / "metrics.csv").read_text().splitlines()[0]
    # Resuming a finished run trains nothing and refits nothing again.
    run_training(config.replace(resume=True), guard=ThermalGuard([]))
    assert read_records(run) == records
    # Resumed for one more epoch: that epoch trains the refitted model, and the new last model
    # is refitted in turn.
    run_training(config.replace(resume=True, epochs=3), guard=ThermalGuard([]))
    extended = read_records(run)
    assert extended[:3] == records
    assert [(r["epoch"], r.get("phase")) for r in extended[3:]] == [(3, None), (3, "head_refit")]

    # A run finished without the refit, resumed with it: no training, the same refit.
    later = tmp_path / "later"
    run_training(tiny_refit_config(data, later, head_refit=False), guard=ThermalGuard([]))
    before = read_records(later)
    assert [r.get("phase") for r in before] == [None, None]
    assert [r["loss"] for r in before] == pytest.approx([r["loss"] for r in records[:2]])
    run_training(
        tiny_refit_config(data, later, head_refit=True, resume=True), guard=ThermalGuard([])
    )
    resumed = read_records(later)
    assert resumed[:2] == before and resumed[2]["phase"] == "head_refit"
    for key in ("refit_tiles", "refit_loss_before", "refit_loss_after", "macro_f1"):
        assert resumed[2][key] == pytest.approx(refit[key]), key
    assert resumed[2]["confusion"] == refit["confusion"]
