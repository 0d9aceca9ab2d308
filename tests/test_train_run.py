"""End-to-end training on a tiny data set (in-process): metrics, thermal pauses, refusals, CLI."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgepanc.cli import main
from edgepanc.errors import InputError
from edgepanc.thermal import ScriptedSource, ThermalGuard, ThermalLimits, ThermalTimeout
from edgepanc.training.config import TrainConfig
from edgepanc.training.runner import run_training

from train_support import blas_threads, write_tiny_dataset

METRIC_KEYS = ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy", "confusion", "combined_score")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def tiny_config(data: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        data=str(data),
        out=str(out),
        preset="tiny",
        patch_size=(16, 16, 16),
        target_spacing=(2.0, 2.0, 2.0),
        epochs=1,
        steps_per_epoch=2,
        warmup_epochs=0,
    )
    return base.replace(**changes)


class FakeClock:
    """Monotonic clock advanced only by the fake sleep: thermal pauses take no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def scripted_guard(readings: list[float], timeout_s: float = 600.0) -> ThermalGuard:
    clock = FakeClock()
    limits = ThermalLimits(cpu_c=68.0, hysteresis_c=5.0, poll_s=10.0, timeout_s=timeout_s)
    return ThermalGuard(ScriptedSource(readings), limits, clock=clock, sleep=clock.sleep)


def cli_train_tiny(data: Path, run: Path, *flags: str) -> None:
    """One epoch of the tiny preset through the CLI, with ``flags`` added."""
    result = CliRunner().invoke(
        main,
        ["train", "--data", str(data), "--out", str(run), "--set", "preset=tiny"]
        + ["--set", "patch_size=16,16,16", "--set", "target_spacing=2,2,2", "--set", "epochs=1"]
        + ["--set", "warmup_epochs=0", *flags],
    )
    assert result.exit_code == 0, result.output


def read_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_metrics_all_present_without_lesions_and_with_a_missing_subtype(tmp_path: Path) -> None:
    data = write_tiny_dataset(
        tmp_path / "data",
        train_per_subtype=1,
        validation_per_subtype={0: 1, 1: 1},
        validation_lesions=False,
    )
    run = tmp_path / "run"
    run_training(tiny_config(data, run), guard=ThermalGuard([]))
    record = read_records(run)[-1]
    for key in METRIC_KEYS + ("loss", "seg_loss", "cls_loss", "lr", "seconds", "pause_s"):
        assert key in record, key
    for key in ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy", "combined_score"):
        assert math.isfinite(record[key]) and 0.0 <= record[key] <= 1.0
    assert len(record["confusion"]) == 3
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "loss", "whole_dsc", "lesion_dsc", "macro_f1", "pause_s"} <= set(header)
    for name in (
        "model.json",
        "weights.pt",
        "best.pt",
        "last.pt",
        "curves.png",
        "train.log",
        "plan.json",
    ):
        assert (run / name).is_file(), name
    bundle = json.loads((run / "model.json").read_text())
    assert bundle["kind"] == "trained" and bundle["preprocessing"]["target_spacing"] == [
        2.0,
        2.0,
        2.0,
    ]
    assert "whole_dsc" in bundle["metrics"]["validation"]


def test_hot_sensor_pauses_training_and_logs_the_pause(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # cool, then hot for three polls, then cool enough (below 68 - 5) to resume
    guard = scripted_guard([50.0, 75.0, 72.0, 66.0, 60.0, 50.0])
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        run_training(tiny_config(tiny_data, run, steps_per_epoch=3), guard=guard)
    assert len(guard.events) == 1 and guard.events[0].duration_s == pytest.approx(30.0)
    assert read_records(run)[-1]["pause_s"] == pytest.approx(30.0)
    assert any("thermal pause" in r.getMessage() for r in caplog.records)
    assert "thermal pause" in (run / "train.log").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["thermal"]["pauses"] == 1


def test_thermal_timeout_stops_cleanly_with_a_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    guard = scripted_guard(
        [50.0] * 2 + [90.0], timeout_s=30.0
    )  # one reading per step: epoch 1 fine
    run = tmp_path / "run"
    with pytest.raises(ThermalTimeout, match="--resume"):
        run_training(tiny_config(tiny_data, run, epochs=3, steps_per_epoch=2), guard=guard)
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 1  # the last complete epoch
    assert len(read_records(run)) == 1


def test_existing_run_folder_is_refused_without_resume(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        run_training(tiny_config(tiny_data, run), guard=ThermalGuard([]))
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
    with pytest.raises(InputError, match="no run to resume"):
        run_training(tiny_config(tiny_data, run, resume=True), guard=ThermalGuard([]))


def test_resume_with_different_settings_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_training(tiny_config(tiny_data, run), guard=ThermalGuard([]))
    with pytest.raises(InputError, match="lr="):
        run_training(tiny_config(tiny_data, run, lr=1e-4, resume=True), guard=ThermalGuard([]))


def test_invalid_data_set_stops_before_training(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    mask = next((data / "train" / "subtype1").glob("quiz_1_*[0-9].nii.gz"))
    mask.unlink()
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["train", "--data", str(data), "--out", str(out), "--set", "preset=tiny"]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "quiz_1_" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--set", "epochs=0", "epochs"),
        ("--set", "lr=-1", "lr"),
        ("--set", "lr=2", "lr"),
        ("--set", "lr=nan", "lr"),
        ("--set", "batch_size=-1", "batch_size"),
        ("--set", "patch_size=0,64,64", "patch_size"),
        ("--set", "cls_weight=-1", "cls_weight"),
        ("--fold", "3", "--fold"),
        ("--set", "lesion_dice=mean", "lesion_dice"),
        ("--set", "lesion_recall_weight=1", "lesion_recall_weight"),
        ("--set", "teacher_forcing_end=1.5", "teacher_forcing_end"),
        ("--set", "head_statistics=raw", "head_statistics"),
        ("--set", "teacher_mask_jitter=9", "teacher_mask_jitter"),
        ("--time-budget", "0m", "--time-budget"),
        ("--time-budget", "soon", "--time-budget"),
        ("--set", "time_budget=-5", "time_budget"),
    ],
)
def test_out_of_range_values_are_refused(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    # The recipe knobs are --set keys now; a value out of range is refused as the flag was.
    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), flag, value]
    if flag == "--fold":
        args += ["--folds", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "run").exists()


def test_all_folds_write_splits_and_a_cv_summary(tmp_path: Path) -> None:
    data = write_tiny_dataset(
        tmp_path / "data", train_per_subtype=2, validation_per_subtype={0: 0, 1: 0, 2: 0}
    )
    run = tmp_path / "cv"
    summary = run_training(
        tiny_config(data, run, folds=2, steps_per_epoch=1), guard=ThermalGuard([])
    )
    splits = json.loads((run / "splits.json").read_text())["splits"]
    assert len(splits) == 2
    assert sorted(splits[0]["validation"] + splits[1]["validation"]) == sorted(
        splits[0]["train"] + splits[0]["validation"]
    )
    for fold in (0, 1):
        assert (run / f"fold_{fold}" / "model.json").is_file()
    cv = json.loads((run / "cv_summary.json").read_text())
    assert cv["folds"] == 2 and set(cv["whole_dsc"]) == {"mean", "std"}
    assert summary["folds"] == 2
    # the folds form an ensemble `run` can average: one plan for all, fitted on every case
    from edgepanc.ensemble import read_ensemble

    ensemble = read_ensemble(run)
    assert [m.path.name for m in ensemble.members] == ["fold_0", "fold_1"]
    assert ensemble.members[0].preprocessing == ensemble.members[1].preprocessing
    assert ensemble.provenance["cross_validation"]["folds"] == 2


def test_init_from_starts_from_a_bundles_weights_and_plan(tiny_data: Path, tmp_path: Path) -> None:
    from edgepanc.bundle import load_bundle
    from edgepanc.errors import BundleError

    run_training(tiny_config(tiny_data, tmp_path / "first", target_spacing=(2.5, 2.0, 2.0)))
    first = load_bundle(tmp_path / "first")
    # lr 0: the fine-tuning run cannot move the weights, so it must end where it started
    run_training(
        tiny_config(
            tiny_data,
            tmp_path / "second",
            target_spacing=None,
            init_from=str(tmp_path / "first"),
            lr=0.0,
            seed=5,
        )
    )
    second = load_bundle(tmp_path / "second")
    assert second.plan.target_spacing == first.plan.target_spacing == (2.5, 2.0, 2.0)
    assert (second.plan.mean, second.plan.std) == (first.plan.mean, first.plan.std)
    before, after = first.load_network().state_dict(), second.load_network().state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "initialised from" in (tmp_path / "second" / "train.log").read_text()

    with pytest.raises(InputError, match="target-spacing"):
        run_training(
            tiny_config(
                tiny_data, tmp_path / "third", init_from=str(tmp_path / "first")
            )  # tiny_config asks for 2 mm, the bundle has 2.5 mm
        )
    with pytest.raises(BundleError, match="does not exist"):
        run_training(tiny_config(tiny_data, tmp_path / "fourth", init_from=str(tmp_path / "none")))


def test_training_with_background_workers_is_reproducible(tiny_data: Path, tmp_path: Path) -> None:
    losses = []
    for name in ("a", "b"):
        run = tmp_path / name
        config = tiny_config(tiny_data, run, epochs=2, steps_per_epoch=3, workers=2)
        run_training(config, guard=ThermalGuard([]))
        losses.append([r["loss"] for r in read_records(run)])
    assert len(losses[0]) == 2 and all(math.isfinite(v) for v in losses[0])
    assert losses[0] == losses[1]


def test_lesion_dice_option_reaches_the_loss(tiny_data: Path, tmp_path: Path) -> None:
    seg_losses = {}
    for mode in ("batch", "sample"):
        run = tmp_path / mode
        cli_train_tiny(tiny_data, run, "--set", "steps_per_epoch=2", "--set", f"lesion_dice={mode}")
        assert json.loads((run / "config.json").read_text())["lesion_dice"] == mode
        seg_losses[mode] = read_records(run)[0]["seg_loss"]
    # Same seed, same batches: only the lesion term of the Dice differs. On a barely trained
    # network per-patch and batch Dice agree to first order (a few 1e-7 apart), so the check is
    # exact: a run repeated with the same options repeats its losses bit for bit
    # (test_training_with_background_workers_is_reproducible).
    assert seg_losses["batch"] != seg_losses["sample"]


def test_lesion_recall_weight_reaches_the_loss(tiny_data: Path, tmp_path: Path) -> None:
    seg_losses = {}
    for beta in (0.5, 0.8):
        run = tmp_path / str(beta)
        cli_train_tiny(
            tiny_data, run, "--set", "steps_per_epoch=2", "--set", f"lesion_recall_weight={beta}"
        )
        assert json.loads((run / "config.json").read_text())["lesion_recall_weight"] == beta
        seg_losses[beta] = read_records(run)[0]["seg_loss"]
    # Same seed, same batches: only the lesion term's weighting of misses differs.
    assert seg_losses[0.5] != pytest.approx(seg_losses[0.8], rel=1e-6)


def test_clean_head_statistics_change_only_the_subtype_loss(
    tiny_data: Path, tmp_path: Path
) -> None:
    records = {}
    for mode in ("augmented", "clean"):
        run = tmp_path / mode
        cli_train_tiny(
            tiny_data,
            run,
            "--set",
            "steps_per_epoch=4",
            "--set",
            f"head_statistics={mode}",
            "--set",
            "teacher_forcing_end=0",
            "--set",
            "teacher_mask_jitter=1",
        )
        saved = json.loads((run / "config.json").read_text())
        assert saved["head_statistics"] == mode and saved["teacher_forcing_end"] == 0.0
        assert saved["teacher_mask_jitter"] == 1
        records[mode] = read_records(run)[0]
    # Same batches; the head's gradient does not reach the trunk, so segmentation is unchanged
    # while the head read different attenuation statistics.
    assert records["augmented"]["seg_loss"] == pytest.approx(records["clean"]["seg_loss"], rel=1e-6)
    assert records["augmented"]["cls_loss"] != pytest.approx(records["clean"]["cls_loss"], rel=1e-6)


def test_score_bundle_script_reproduces_the_runs_last_validation(
    tiny_data: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    run = tmp_path / "run"
    run_training(tiny_config(tiny_data, run, epochs=2), guard=ThermalGuard([]))
    logged = read_records(run)[-1]
    script = Path(__file__).resolve().parents[1] / "scripts" / "score_bundle.py"
    out = tmp_path / "scores.json"
    subprocess.run(
        [sys.executable, str(script), str(run), str(tiny_data), "--out", str(out),
         "--weights", str(run / "last.pt"), "--splits", "validation", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    scored = json.loads(out.read_text())
    assert scored["cases"] == 3
    for key in ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy"):
        assert scored[key] == pytest.approx(logged[key]), key
    assert scored["confusion"] == logged["confusion"]
    missing = subprocess.run(
        [sys.executable, str(script), str(run), str(tiny_data), "--out", str(tmp_path / "x.json"),
         "--splits", "test"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2 and "no labelled cases" in missing.stderr
    assert not (tmp_path / "x.json").exists()


def test_training_steps_run_with_numpy_blas_on_one_thread(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sampler's matrix product per patch left OpenBLAS threads spinning through each step.
    from threadpoolctl import threadpool_limits

    from edgepanc.training.steps import StepRunner

    seen: list[list[int]] = []
    real_step = StepRunner.train_step

    def recording_step(self: StepRunner, *args: object, **kwargs: object) -> object:
        seen.append(blas_threads())
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(StepRunner, "train_step", recording_step)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert before and all(n == 2 for n in before)  # numpy's BLAS is controllable here
        run_training(tiny_config(tiny_data, tmp_path / "run", threads=1), guard=ThermalGuard([]))
        assert blas_threads() == before  # the caller's limits come back
    assert len(seen) == 2 and all(threads == [1] * len(before) for threads in seen)


@pytest.mark.parametrize(("amp", "expected"), [(True, "bf16"), (False, "fp32")])
def test_validation_runs_at_the_precision_the_run_trains_with(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: bool, expected: str
) -> None:
    # Validating in fp32 after bf16 training cost a CPU run twice the time per validation.
    from edgepanc.backends.torch_backend import TorchPredictor

    precisions: list[str] = []
    real_init = TorchPredictor.__init__

    def recording_init(self: TorchPredictor, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)
        precisions.append(self.precision)

    monkeypatch.setattr(TorchPredictor, "__init__", recording_init)
    config = tiny_config(tiny_data, tmp_path / "run", device="cpu", amp=amp, head_refit=False)
    run_training(config, guard=ThermalGuard([]))
    # one predictor for the validation, which also scores the lesion margins (no pass of theirs)
    assert len(precisions) == 1
    assert set(precisions) == {expected}
    record = read_records(tmp_path / "run")[-1]
    assert 0.0 <= record["whole_dsc"] <= 1.0 and math.isfinite(record["combined_score"])


def test_validation_precision_follows_the_autocast_dtype() -> None:
    from edgepanc.training.validation import validation_precision

    assert validation_precision(None) == "fp32"
    assert validation_precision(torch.bfloat16) == "bf16"
    assert validation_precision(torch.float16) == "fp16"
    with pytest.raises(ValueError, match="no validation precision"):
        validation_precision(torch.float64)


def test_training_chooses_lesion_margins_on_the_cases_that_choose_the_model(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The margins in the bundle are the ones ``choose_margins`` gives on the best weights'
    trials of the validation cases (no selection cases here), and the log says so; with
    ``lesion_margins`` off the bundle has none."""
    from edgepanc.bundle import load_bundle
    from edgepanc.data.cases import discover_cases
    from edgepanc.training.dataset import prepare_cases
    from edgepanc.training.lesion_margins import choose_margins, margin_trials

    run = tmp_path / "run"
    run_training(tiny_config(tiny_data, run), guard=ThermalGuard([]))
    bundle = load_bundle(run)
    record = bundle.metrics["lesion_margins"]
    assert record["chosen_on"] == "validation"
    assert list(bundle.lesion_margins_mm) == record["margins_mm"]
    assert len(bundle.lesion_margins_mm) == 3
    validation = [c for c in discover_cases(tiny_data) if c.split == "validation"]
    assert sum(record["cases"]) == len(validation)
    from edgepanc.backends.torch_backend import TorchPredictor

    predictor = TorchPredictor(bundle.load_network(), device="cpu")
    dice, predicted = margin_trials(
        predictor, prepare_cases(validation, bundle.plan), bundle.plan.patch_size
    )
    again = choose_margins(dice, predicted, 3)
    assert again.margins_mm == bundle.lesion_margins_mm
    assert again.lesion_dsc_without == pytest.approx(record["lesion_dsc_without"])
    assert "lesion margins chosen on" in (run / "train.log").read_text()

    off = tmp_path / "off"
    run_training(tiny_config(tiny_data, off, lesion_margins=False), guard=ThermalGuard([]))
    assert load_bundle(off).lesion_margins_mm == ()
    assert "lesion_margins" not in load_bundle(off).metrics


@pytest.mark.parametrize("in_validation", [True, False], ids=["from_validation", "own_pass"])
def test_the_margins_come_from_the_final_validation_or_else_a_pass_of_their_own(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_validation: bool
) -> None:
    """The validation that keeps the final weights (the last epoch's, or the refitted head's)
    scores the margin candidates from its own network pass, and the margins equal those of a
    separate pass over the best weights; when it did not score them, that pass runs."""
    from edgepanc.backends.torch_backend import TorchPredictor
    from edgepanc.bundle import load_bundle
    from edgepanc.data.cases import discover_cases
    from edgepanc.training import lesion_margins
    from edgepanc.training.dataset import prepare_cases
    from edgepanc.training.run_validation import RunValidation

    own_passes = []
    real_pass = lesion_margins.choose_run_lesion_margins

    def counted_pass(*args: object, **kwargs: object) -> object:
        own_passes.append(args)
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(lesion_margins, "choose_run_lesion_margins", counted_pass)
    if not in_validation:
        monkeypatch.setattr(
            RunValidation, "margins_due", lambda self, refit=False, last=False: False
        )
    validation = [c for c in discover_cases(tiny_data) if c.split == "validation"]
    for name, changes in (("last_epoch", {}), ("refit", {"head_refit": True})):
        run = tmp_path / name
        run_training(tiny_config(tiny_data, run, **changes), guard=ThermalGuard([]))
        bundle = load_bundle(run)
        record = bundle.metrics["lesion_margins"]
        predictor = TorchPredictor(bundle.load_network(), device="cpu")
        dice, predicted = lesion_margins.margin_trials(
            predictor, prepare_cases(validation, bundle.plan), bundle.plan.patch_size
        )
        again = lesion_margins.choose_margins(dice, predicted, 3)
        assert bundle.lesion_margins_mm == again.margins_mm
        assert record["cases"] == list(again.cases)
        for curve, expected in zip(record["curves"], again.curves, strict=True):
            assert curve == pytest.approx(expected, abs=1e-4)
    assert len(own_passes) == (0 if in_validation else 2)


def test_a_run_that_validates_a_few_times_takes_the_margins_of_its_best_validation(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two validations planned each scores the margin candidates; when the earlier one is
    the best, the bundle's margins are its trials' (those of a separate pass over the best
    weights) and no pass of their own runs after training."""
    from edgepanc.backends.torch_backend import TorchPredictor
    from edgepanc.bundle import load_bundle
    from edgepanc.data.cases import discover_cases
    from edgepanc.training import lesion_margins
    from edgepanc.training.dataset import prepare_cases
    from edgepanc.training.run_validation import RunValidation
    from edgepanc.training.train_state import TrainState

    own_passes, scored = [], []
    real_validate, real_keep = RunValidation.validate, TrainState.keep_score
    monkeypatch.setattr(
        lesion_margins, "choose_run_lesion_margins", lambda *a, **k: own_passes.append(a)
    )

    def validate(self: RunValidation, margins: bool = False) -> dict:
        scored.append(margins)
        return real_validate(self, margins)

    def keep_only_the_first(self: TrainState, record: dict, force: bool = False) -> bool:
        # The later validation is never better: the best weights are epoch 2's.
        return real_keep(self, record, force) if record["epoch"] == 2 else False

    monkeypatch.setattr(RunValidation, "validate", validate)
    monkeypatch.setattr(TrainState, "keep_score", keep_only_the_first)
    run = tmp_path / "run"
    run_training(tiny_config(tiny_data, run, epochs=4, val_every=2), guard=ThermalGuard([]))
    assert scored == [True, True] and own_passes == []
    bundle = load_bundle(run)
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == 2
    validation = [c for c in discover_cases(tiny_data) if c.split == "validation"]
    predictor = TorchPredictor(bundle.load_network(), device="cpu")
    dice, predicted = lesion_margins.margin_trials(
        predictor, prepare_cases(validation, bundle.plan), bundle.plan.patch_size
    )
    again = lesion_margins.choose_margins(dice, predicted, 3)
    assert bundle.lesion_margins_mm == again.margins_mm
    record = bundle.metrics["lesion_margins"]
    for curve, expected in zip(record["curves"], again.curves, strict=True):
        assert curve == pytest.approx(expected, abs=1e-4)
