"""Honest selection: with ``selection_share`` the held-out selection cases choose the best
checkpoint (and whether the refitted head is kept); the validation cases that report the figures
never choose."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_train_run import tiny_config

from edgepanc.thermal import ThermalGuard
from edgepanc.training.config import TrainConfig
from edgepanc.training.run_validation import RunValidation
from edgepanc.training.runner import run_training
from edgepanc.training.selection import (
    SELECTION_FILE,
    choosing_score,
    hold_out_selection,
    who_chose,
)
from edgepanc.training.steps import StepRunner
from edgepanc.training.train_state import TrainState

from train_support import write_tiny_dataset


@dataclass(frozen=True)
class Case:
    case_id: str
    split: str
    subtype: int | None


def case(case_id: str, split: str, subtype: int | None) -> Case:
    return Case(case_id, split, subtype)


@pytest.fixture()
def cases() -> list:
    train = [case(f"t{i:02d}", "train", i % 3) for i in range(30)]
    return train + [case(f"v{i}", "validation", i % 3) for i in range(6)]


def test_selection_cases_are_a_stratified_seeded_share_of_the_training_cases(
    cases: list,
) -> None:
    kept, chosen, drawn = hold_out_selection(cases, 0.2)
    assert len(chosen) == 6 and sorted(c.case_id for c in chosen) == drawn["selection"]
    assert Counter(c.subtype for c in chosen) == {0: 2, 1: 2, 2: 2}  # stratified
    assert all(c.split == "train" for c in chosen)  # never a validation case
    assert sorted(kept + chosen, key=lambda c: c.case_id) == sorted(cases, key=lambda c: c.case_id)
    assert [c for c in kept if c.split == "validation"] == cases[30:]
    assert hold_out_selection(cases, 0.2)[1] == chosen  # the same draw on --resume
    assert hold_out_selection(cases, 0.2, seed=1)[1] != chosen
    assert hold_out_selection(cases, 0.0) == (cases, [], None)
    with pytest.raises(ValueError, match="cannot spare"):
        hold_out_selection([case("a", "train", 0), case("v", "validation", 0)], 0.2)


def test_the_selection_score_chooses_when_there_is_one() -> None:
    state = TrainState()
    assert state.keep_score({"epoch": 1, "combined_score": 0.5, "selection_combined_score": 0.6})
    # the reporting cases improve, the choosing ones do not: not a new best
    assert not state.keep_score(
        {"epoch": 2, "combined_score": 0.9, "selection_combined_score": 0.55}
    )
    assert state.best_epoch == 1 and state.best_metrics["combined_score"] == 0.5
    assert choosing_score({"combined_score": 0.7}) == 0.7  # no selection cases: validation
    assert who_chose(0, 12)["honest"] is False and "optimistic" in who_chose(0, 12)["chosen_on"]
    assert who_chose(9, 12)["honest"] is True


def test_a_run_chooses_its_best_epoch_on_the_selection_cases_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=3)
    seen: dict[str, set] = {}
    validations = Counter()
    steps_init = StepRunner.__init__

    def recording_init(self, config, network, device, amp, train_cases, *args, **kwargs):
        seen["train"] = {c.case_id for c in train_cases}
        steps_init(self, config, network, device, amp, train_cases, *args, **kwargs)

    def scripted_summary(self, cases, margins=False):
        """Validation improves every epoch; the selection cases peak at epoch 2."""
        kind = "selection" if cases is self.select_cases else "validation"
        validations[kind] += 1
        epoch = validations[kind]  # one validation per epoch
        seen.setdefault(kind, set()).update(c.case_id for c in cases)
        score = epoch / 10 if kind == "validation" else 1.0 - abs(epoch - 2) / 10
        return {
            "whole_dsc": score,
            "lesion_dsc": score,
            "macro_f1": score,
            "accuracy": score,
            "combined_score": score,
            "n_cases": len(cases),
        }

    monkeypatch.setattr(StepRunner, "__init__", recording_init)
    monkeypatch.setattr(RunValidation, "summarize", scripted_summary)
    run = tmp_path / "run"
    config: TrainConfig = tiny_config(data, run, epochs=4, selection_share=0.34, threads=1)
    run_training(config, guard=ThermalGuard([]))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 2  # the validation cases would have chosen epoch 4
    assert summary["best_metrics"]["combined_score"] == pytest.approx(0.2)  # reported figures
    assert summary["selection"]["honest"] is True
    drawn = json.loads((run / SELECTION_FILE).read_text())
    assert set(drawn["selection"]) == seen["selection"] and len(seen["selection"]) == 3
    assert not seen["selection"] & seen["train"]  # held out of training
    assert not seen["selection"] & seen["validation"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["selection_combined_score"] for r in records] == pytest.approx([0.9, 1.0, 0.9, 0.8])


@pytest.mark.parametrize("share", [0.0, 0.34])
def test_the_refitted_head_is_kept_unless_selection_cases_score_it_worse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=3)

    validations = Counter()

    def falling_summary(self, cases, margins=False):
        """Every validation scores worse than the one before, the refit's too."""
        if cases is self.val_cases:
            validations["done"] += 1  # the selection cases are scored after them, alike
        done = validations["done"]
        refit = done >= 3  # the refit validates after the last (second) epoch
        score = 0.5 - 0.1 * (done + refit)
        keys = ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy", "combined_score")
        return {**dict.fromkeys(keys, score), "n_cases": len(cases)}

    monkeypatch.setattr(RunValidation, "summarize", falling_summary)
    run = tmp_path / "run"
    config = tiny_config(data, run, epochs=2, head_refit=True, selection_share=share, threads=1)
    run_training(config, guard=ThermalGuard([]))
    summary = json.loads((run / "summary.json").read_text())
    kept = summary["best_metrics"].get("phase") == "head_refit"
    # no held-out cases: the validation cases do not judge the refit, it is kept; with selection
    # cases that score it worse, the first epoch's weights stay the bundle's
    assert kept is (share == 0.0)
    assert summary["best_epoch"] == (2 if share == 0.0 else 1)
