"""``--time-budget``: the epoch count follows from the measured step and validation times, and
the run ends within the budget (a scripted clock: nothing waits for real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_run import tiny_config as train_run_config

from edgepanc.commands.train import Duration
from edgepanc.thermal import ThermalGuard
from edgepanc.training.config import TrainConfig
from edgepanc.training.head_refit import HeadRefitConfig
from edgepanc.training.run_validation import PROBE_CASES, RunValidation
from edgepanc.training.runner import run_training
from edgepanc.training.steps import StepRunner
from edgepanc.training.time_budget import (
    LESION_MARGIN_VALIDATIONS,
    MARGIN_FINISH_VALIDATIONS,
    REFIT_TILES_PER_CASE,
    EpochPlanner,
    Measured,
    TimeBudget,
    seconds_for,
)

from train_support import write_tiny_dataset


class ScriptedClock:
    """A clock that moves only when a scripted training step or validation says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("budget") / "data", train_per_subtype=1)


def tiny_config(data: Path, out: Path, **changes: object) -> TrainConfig:
    """The training tests' tiny run, with room for as many epochs as a budget plans."""
    return train_run_config(data, out, epochs=50, threads=1, device="cpu").replace(**changes)


def script_times(
    monkeypatch: pytest.MonkeyPatch, clock: ScriptedClock, step_s, validation_s: float
) -> None:
    """Each training step takes ``step_s(step)`` scripted seconds, each validation
    ``validation_s`` (and a share more when it scores the lesion margins) and choosing the lesion
    margins two validations' time unless the best weights' validation scored them."""
    from edgepanc.training import loop

    train_step, validate, probe = StepRunner.train_step, RunValidation.validate, RunValidation.probe
    choose_margins = loop.choose_trainer_margins

    def timed_margins(trainer):
        # The best weights' validation paid for them already; else a pass of their own.
        if trainer.validation.best_margin_trials is None:
            clock.now += LESION_MARGIN_VALIDATIONS * validation_s
        return choose_margins(trainer)

    def with_margins(seconds: float, margins: bool) -> float:
        # Scoring the margins finishes each choosing case once more per candidate.
        return seconds * (1.0 + MARGIN_FINISH_VALIDATIONS) if margins else seconds

    def timed_step(self, batch, state):
        clock.now += step_s(state.step)
        return train_step(self, batch, state)

    def timed_validation(self, margins=False):
        clock.now += with_margins(validation_s, margins)
        return validate(self, margins)

    def timed_probe(self, count=PROBE_CASES, margins=False):
        share = probe(self, count, margins)
        clock.now += with_margins(validation_s * share, margins)  # the probed cases' part
        return share

    monkeypatch.setattr(StepRunner, "train_step", timed_step)
    monkeypatch.setattr(RunValidation, "validate", timed_validation)
    monkeypatch.setattr(RunValidation, "probe", timed_probe)
    monkeypatch.setattr(loop, "choose_trainer_margins", timed_margins)


def test_durations_parse_as_seconds() -> None:
    duration = Duration()
    assert [duration.convert(t, None, None) for t in ("90s", "45m", "2h", "1.5h", "30")] == [
        90.0,
        2700.0,
        7200.0,
        5400.0,
        30.0,
    ]


def test_the_epoch_count_follows_from_the_measured_times() -> None:
    clock = ScriptedClock()
    budget = TimeBudget(1000.0, clock=clock)
    clock.now += 100.0  # the first epoch and its validation are behind us
    measured = Measured(
        epoch_s=30.0, validation_s=12.0, val_cases=12, train_cases=88, samples_per_epoch=100
    )
    # usable 970 - 100 = 870 s; epochs 2..23: 22 * 30 s, validations after 5, 10, 15, 20 and 23:
    # 5 * 12 s, the refit (8 tiles x 88 cases at 0.3 s a sample x 0.5 for a forward pass, 15 s
    # to fit the head, a validation) 132.6 s: 852.6 s (epoch 24 would need 882.6 s)
    assert budget.epochs_that_fit(1, measured, val_every=5, head_refit=True) == 23
    # without the refit: 26 * 30 + 6 * 12 = 852 s (epoch 28: 882 s)
    assert budget.epochs_that_fit(1, measured, val_every=5, head_refit=False) == 27
    assert seconds_for(1, 23, measured, 5, True) == pytest.approx(852.6)
    # choosing the lesion margins keeps two validations (24 s) back: epoch 23 no longer fits
    with_margins = Measured(30.0, 12.0, 12, 88, 100, margin_validations=2.0)
    assert seconds_for(1, 23, with_margins, 5, True) == pytest.approx(852.6 + 24.0)
    assert budget.epochs_that_fit(1, with_margins, val_every=5, head_refit=True) == 22
    slower = Measured(60.0, 12.0, 12, 88, 100)
    assert budget.epochs_that_fit(1, slower, val_every=5, head_refit=True) == 10
    clock.now += 10_000.0  # over the budget: no more epochs, and never fewer than one
    assert budget.epochs_that_fit(1, measured, val_every=5, head_refit=True) == 1


def test_the_head_refit_is_reckoned_from_its_tiles_not_from_whole_validation_cases() -> None:
    # A real 30-minute run on a shared 2-core CPU measured a 60 s epoch of 100 samples and a
    # 186 s validation of 12 cases; reckoning the refit as 88 such validation cases (1823 s)
    # left room for one epoch, while the refit took 71 s.
    clock = ScriptedClock()
    budget = TimeBudget(1800.0, clock=clock)
    clock.now += 272.0
    measured = Measured(60.0, 186.1, 12, 88, 100)
    assert measured.refit_s() == pytest.approx(8 * 88 * 0.6 * 0.5 + 15.0 + 186.1)
    assert budget.epochs_that_fit(1, measured, val_every=64, head_refit=True) == 15
    assert HeadRefitConfig().max_tiles_per_case == REFIT_TILES_PER_CASE
    # with the tiles counted (a quiz run's 310 of at most 704) the estimate is what it will read
    counted = Measured(60.0, 186.1, 12, 88, 100, refit_tiles=310)
    assert counted.refit_s() == pytest.approx(310 * 0.6 * 0.5 + 15.0 + 186.1)


def test_the_refit_tiles_are_counted_as_the_refit_selects_them(data: Path) -> None:
    import numpy as np
    import torch

    from edgepanc.networks import build_network
    from edgepanc.training.dataset import PreparedCase
    from edgepanc.training.head_refit import collect_tile_features, count_refit_tiles

    config = tiny_config(data, data.parent / "unused")
    rng = np.random.default_rng(0)
    cases = []
    for index, (shape, box) in enumerate(
        [((24, 40, 40), np.s_[4:12, 5:20, 8:30]), ((20, 36, 48), np.s_[10:18, 20:34, 2:9])]
    ):
        label = np.zeros(shape, np.uint8)
        label[box] = 2
        image = rng.standard_normal(shape).astype(np.float32)
        empty = np.zeros((0, 3), np.int32)
        cases.append(
            PreparedCase(
                f"c{index}", index, image, label, (2.0, 2.0, 2.0), None, None, empty, empty, 0.0
            )
        )
    cases.append(
        PreparedCase("none", None, image, label, (2.0, 2.0, 2.0), None, None, empty, empty, 0.0)
    )
    torch.manual_seed(0)
    features = collect_tile_features(
        build_network("tiny"),
        cases,
        config.patch_size,
        torch.device("cpu"),
        config.val_step_fraction,
    )
    assert count_refit_tiles(cases, config) == features.pooled.shape[0] > 2


def test_a_settled_plan_shrinks_while_slow_and_grows_back_but_never_past_itself() -> None:
    clock = ScriptedClock()
    planner = EpochPlanner(
        TimeBudget(1000.0, clock=clock),
        val_every=1,
        head_refit=False,
        train_cases=4,
        val_cases=2,
        samples_per_epoch=4,
    )
    for _ in range(3):
        clock.now += 12.0
        planner.record_epoch(10.0, 2.0)
    first = planner.plan(done=3, planned=None)  # still settling: the plan follows the pace
    assert first == 3 + (970 - 36 - 2) // 12
    for _ in range(3):  # the machine slows down three-fold
        clock.now += 36.0
        planner.record_epoch(30.0, 6.0)
    slow = planner.plan(done=6, planned=first)
    assert slow < first
    for _ in range(3):  # and speeds up again, faster than at first
        clock.now += 6.0
        planner.record_epoch(5.0, 1.0)
    fast = planner.plan(done=9, planned=slow)
    assert fast == first  # back up to the settled plan, not past it
    assert planner.budget.epochs_that_fit(9, planner.measured(), 1, False) > first


def test_a_settled_plan_does_not_grow_back_by_a_single_epoch() -> None:
    clock = ScriptedClock()
    planner = EpochPlanner(TimeBudget(1000.0, clock=clock), 1, False, 4, 2, 4)
    for _ in range(4):
        clock.now += 12.0
        planner.record_epoch(10.0, 2.0)
    fits = planner.budget.epochs_that_fit(4, planner.measured(), 1, False)
    assert planner.plan(done=4, planned=None) == fits
    # a wobble cut the plan by one; the same pace again does not flicker it back
    assert planner.plan(done=4, planned=fits - 1) == fits - 1
    assert planner.plan(done=4, planned=fits - 2) == fits  # two epochs is a real recovery


def scripted_budgeted_run(
    data: Path, run: Path, monkeypatch: pytest.MonkeyPatch, **changes: object
) -> tuple[dict, list[dict], float]:
    """A 40 s budgeted tiny run of 1 s steps and 3 s validations: its summary, its metrics
    rows and the scripted seconds it took."""
    clock = ScriptedClock()
    script_times(monkeypatch, clock, step_s=lambda step: 1.0, validation_s=3.0)
    budget = TimeBudget(40.0, clock=clock)
    config = tiny_config(data, run, time_budget=40.0, **changes)
    run_training(config, guard=ThermalGuard([]), budget=budget)
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return summary, records, clock.now - budget.started


def test_a_budgeted_run_plans_its_epochs_and_ends_within_the_budget(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary, records, took = scripted_budgeted_run(data, tmp_path / "run", monkeypatch)
    # an epoch: 2 steps of 1 s and a validation of 3 s; without a refit the last validation
    # may not keep the final weights, so a pass of their own (two validations) is kept back
    # for the lesion margins: usable 38.8 s: after the first (5 s), (38.8 - 5 - 6) // 5 = 5 more
    assert summary["time"]["planned_epochs"] == 6 and summary["epochs"] == 6
    assert summary["time"]["budget_s"] == 40.0
    assert summary["time"]["planned_s"] == pytest.approx(36.0)
    # the last epoch's validation was the best and scored the margins: 0.4 of a validation more
    assert summary["time"]["elapsed_s"] == pytest.approx(30.0 + MARGIN_FINISH_VALIDATIONS * 3.0)
    assert summary["time"]["within_budget"] is True
    assert len(records) == 6 and "whole_dsc" in records[-1]
    assert took <= 40.0


def test_a_run_that_validates_a_few_times_scores_the_margins_in_each_and_keeps_nothing_back(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 6 epochs validating every 3rd: two validations planned, each scores the margins (4.2 s)
    run = tmp_path / "run"
    summary, records, took = scripted_budgeted_run(data, run, monkeypatch, epochs=6, val_every=3)
    # the first epoch: 2 s of steps and a probe of every case with the margins (4.2 s); then
    # usable 38.8 - 6.2 = 32.6 s: epochs 2..9 (16 s) with validations after 3, 6 and 9
    # (12.6 s) fit, epoch 10 with a fourth would not; no pass for the margins is kept back
    assert records[0]["val_s_estimated"] == pytest.approx(3.0 * (1 + MARGIN_FINISH_VALIDATIONS))
    assert summary["epochs"] == summary["time"]["planned_epochs"] == 9
    assert summary["time"]["elapsed_s"] == pytest.approx(6.2 + 16.0 + 12.6)
    assert summary["time"]["planned_s"] == pytest.approx(summary["time"]["elapsed_s"])
    assert [r["epoch"] for r in records if "val_s" in r] == [3, 6, 9]
    assert all(r["val_s"] == pytest.approx(4.2) for r in records if "val_s" in r)
    assert took == pytest.approx(summary["time"]["elapsed_s"]) and took <= 40.0


def test_the_margins_cost_kept_back_follows_where_they_are_scored(tmp_path: Path) -> None:
    from edgepanc.training.epoch_plan import margin_validations

    config = tiny_config(tmp_path, tmp_path / "run")
    # every validation scores them: their time is in each measured validation
    assert margin_validations(config, in_validations=True, in_refit=False) == 0.0
    assert margin_validations(config, False, in_refit=True) == MARGIN_FINISH_VALIDATIONS
    assert margin_validations(config, False, False) == LESION_MARGIN_VALIDATIONS
    assert margin_validations(config.replace(lesion_margins=False), False, False) == 0.0
    # a resumed run whose best validation came before the resume lost its trials: a pass
    from edgepanc.training.epoch_plan import EpochPlan

    plan = EpochPlan.for_run(config, TimeBudget(100.0), False, [], 3, margins_in=(True, False))
    assert plan.planner.margin_validations == 0.0
    plan.keep_back_margin_pass()
    assert plan.planner.margin_validations == LESION_MARGIN_VALIDATIONS


def test_a_run_that_slows_down_still_stops_within_the_budget(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ScriptedClock()
    # steps take 1 s for the first four epochs, then 4 s: the plan must shrink
    script_times(monkeypatch, clock, step_s=lambda step: 1.0 if step < 8 else 4.0, validation_s=3.0)
    run = tmp_path / "run"
    config = tiny_config(data, run, time_budget=60.0, val_every=5, head_refit=True)
    budget = TimeBudget(60.0, clock=clock)
    run_training(config, guard=ThermalGuard([]), budget=budget)
    summary = json.loads((run / "summary.json").read_text())
    assert clock.now - budget.started <= 60.0
    assert summary["time"]["within_budget"] is True
    assert summary["epochs"] == summary["time"]["planned_epochs"] >= 5
    # at the first pace (2 s epochs) the plan was 18 epochs; four-fold slower steps cut it
    assert summary["epochs"] < 18
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the refit ran last and validated; the last epoch's weights were scored before it
    assert records[-1]["phase"] == "head_refit" and "whole_dsc" in records[-1]
    assert any("whole_dsc" in r for r in records[:-1] if r["epoch"] == summary["epochs"])


def test_a_budget_counts_from_the_runs_start_and_is_recorded_without_one(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "plain"
    run_training(tiny_config(data, run, epochs=1), guard=ThermalGuard([]))
    timing = json.loads((run / "summary.json").read_text())["time"]
    assert timing["budget_s"] is None and timing["planned_epochs"] is None
    assert timing["elapsed_s"] > 0


def test_a_validation_probe_times_a_few_cases_and_scales_by_their_tiles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Twelve cases of 1 to 12 tiles along z; a case's validation takes 0.5 s per tile.
    from types import SimpleNamespace

    import numpy as np

    from edgepanc.training import run_validation
    from edgepanc.training.distributed import DistContext

    clock = ScriptedClock()
    validated: list[int] = []

    with_margins: list[int] = []

    def scripted_validate_cases(model, cases, patch_size, device, step, precision, margins=()):
        for case in cases:
            validated.append(case.image.shape[0] // 16)
            with_margins.extend([case.image.shape[0] // 16] if margins else [])
            clock.now += 0.5 * (case.image.shape[0] // 16)
        return []

    monkeypatch.setattr(run_validation, "validate_cases", scripted_validate_cases)
    config = SimpleNamespace(patch_size=(16, 16, 16), val_step_fraction=1.0, epochs=9, val_every=3)
    cases = [SimpleNamespace(image=np.zeros((16 * n, 16, 16))) for n in (7, 1, 12, 3, 9, 5)]
    select = [SimpleNamespace(image=np.zeros((16 * n, 16, 16))) for n in (2, 4, 6, 8, 10, 11)]
    validation = RunValidation(None, config, (torch_cpu(), None), cases, select, DistContext())
    start = clock.now
    share = validation.probe()
    assert len(validated) == PROBE_CASES
    assert min(validated) == 1 and max(validated) == 12  # spread from the smallest to the largest
    assert share == pytest.approx(sum(validated) / 78)
    # the probe's time over its share is a whole validation's: 78 tiles at 0.5 s
    assert (clock.now - start) / share == pytest.approx(39.0)
    assert with_margins == []
    # scoring the margins too, only the choosing cases among them (the selection cases) do
    validated.clear()
    validation.probe(margins=True)
    assert sorted(with_margins) == sorted(set(validated) & {2, 4, 6, 8, 10, 11}) != []
    # with no more cases than the probe takes, it validates them all
    validated.clear()
    small = RunValidation(None, config, (torch_cpu(), None), cases[:3], [], DistContext())
    assert small.probe() == 1.0 and sorted(validated) == [1, 7, 12]


def torch_cpu():
    import torch

    return torch.device("cpu")
