"""The training loop: :class:`Trainer` runs epochs, validates, checkpoints and logs.

Precision: fp16 autocast with ``torch.amp.GradScaler("cuda")`` on CUDA; on CPU, fp32 by default.
``--amp`` on CPU switches on bf16 autocast, which halves the step on a CPU with native bf16 and is
an order of magnitude slower on one without, hence fp32 as the CPU default (timings in
docs/measurements/cpu_recipe.md). Optimiser: AdamW with linear warm-up then cosine decay per step,
gradient norm clipped at ``config.grad_clip`` (the steps: :mod:`edgepanc.training.steps`). The
best checkpoint is chosen by :func:`edgepanc.metrics.combined_score` of the validation metrics;
``patience`` validations without improvement stop the run early.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgepanc.backends import devices
from edgepanc.errors import InputError
from edgepanc.thermal import ThermalGuard, ThermalTimeout
from edgepanc.training.augmentation import AugmentationConfig
from edgepanc.training.checkpoint import restore_rng_states, rng_states, save_checkpoint
from edgepanc.training.config import TrainConfig
from edgepanc.training.dataset import PreparedCase
from edgepanc.training.distributed import (
    DistContext,
    barrier,
    gather_lists,
    mean_across_ranks,
    shard,
)
from edgepanc.training.logs import epoch_line, plot_curves, refit_line, write_metrics
from edgepanc.training.outputs import write_run_bundle, write_run_summary
from edgepanc.training.steps import StepRunner
from edgepanc.training.time_budget import EpochPlanner, TimeBudget
from edgepanc.training.validation import summarize_results, validate_cases

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop carries between epochs (saved in every checkpoint)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken
    best_score: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict[str, Any] = field(default_factory=dict)
    stale_validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    head_refitted: bool = False  # --head-refit has run (after the last epoch)
    planned_epochs: int | None = None  # the epoch count a time budget planned (else epochs)


def resolve_device(requested: str, context: DistContext) -> torch.device:
    """``auto``: CUDA when available; under DDP on CUDA, this process's local GPU."""
    requested = devices.resolve_device(requested)
    if requested == "cuda":
        if not devices.cuda_available():
            raise InputError("--device", "cuda asked for, but torch sees no CUDA device")
        torch.cuda.set_device(context.local_rank)
        return torch.device("cuda", context.local_rank)
    return torch.device("cpu")


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype, or None for fp32 (see the module docstring for the defaults)."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def warn_if_bf16_is_emulated(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """Warn (and return True) when bf16 autocast runs on a CPU without native bf16, where it is
    about 10x slower than fp32 (docs/measurements/cpu_recipe.md).

    Example: ``warn_if_bf16_is_emulated(torch.device("cpu"), torch.bfloat16)`` -> ``True`` on
    an AVX2-only CPU.
    """
    if device.type != "cpu" or amp_dtype != torch.bfloat16:
        return False
    from edgepanc.backends.openvino_backend import machine_cpu_flags, native_bf16_problem

    problem = native_bf16_problem(machine_cpu_flags())
    if problem is not None:
        log.warning("--amp on this CPU: %s; --no-amp (fp32) trains faster here", problem)
    return problem is not None


class Trainer:
    """Trains one model on prepared cases and writes the run folder (rank 0 only).

    ``guard`` is injectable so tests can script temperatures; ``augmentation`` too.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        train_cases: Sequence[PreparedCase],
        val_cases: Sequence[PreparedCase],
        plan: Any,
        network_config: Any,
        guard: ThermalGuard,
        context: DistContext | None = None,
        augmentation: AugmentationConfig | None = None,
        budget: TimeBudget | None = None,
    ) -> None:
        self.config = config
        self.budget = budget
        # One clock for every duration the run measures, so that tests can script it.
        self.clock = budget.clock if budget is not None else time.monotonic
        self.started = budget.started if budget is not None else self.clock()
        self.run_dir = Path(run_dir)
        self.context = context or DistContext()
        self.device = resolve_device(config.device, self.context)
        if config.threads is not None:
            # One thread per process avoids OpenMP oversubscription on a small or shared CPU.
            torch.set_num_threads(config.threads)
        self.amp_dtype = autocast_dtype(self.device, config.amp)
        warn_if_bf16_is_emulated(self.device, self.amp_dtype)
        self.plan = plan
        self.network_config = network_config
        self.guard = guard
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)
        # Without a subtype label the head only ever sees a zero loss: the bundle says so.
        self.classifier = any(case.subtype is not None for case in self.train_cases)
        self.steps = StepRunner(
            config,
            network_config,
            self.device,
            self.amp_dtype,
            train_cases,
            self.context,
            augmentation,
        )
        self.model = self.steps.model
        self.state = TrainState()
        self.planner = None
        if budget is not None:
            self.planner = EpochPlanner(
                budget,
                config.val_every,
                config.head_refit and self.classifier,
                len(self.train_cases),
                len(self.val_cases),
                agree=lambda value: mean_across_ranks([value], self.context)[0],
            )

    # -- checkpoints -------------------------------------------------------------------------

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "config_identity": self.config.identity(),
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.steps.optimizer.state_dict(),
            "scheduler": self.steps.scheduler.state_dict(),
            "scaler": self.steps.scaler.state_dict(),
            "state": self.state.__dict__,
            "rng": rng_states(),
        }

    def save_last(self) -> None:
        if self.context.is_main:
            save_checkpoint(self.last_path, self.checkpoint_state())

    def start_from(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Initialise the weights from a trained bundle's (``--init-from``, read from ``source``).

        Heads that only one side has (deep supervision switched on or off) are left as they are.
        """
        result = self.model.load_state_dict(state, strict=False)
        log.info(
            "initialised from %s (%d tensors; new: %s; unused: %s)",
            source,
            len(state) - len(result.unexpected_keys),
            ", ".join(result.missing_keys) or "none",
            ", ".join(result.unexpected_keys) or "none",
        )

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint of the same experiment (read by ``load_checkpoint``).

        A checkpoint whose parts do not fit this run (edited, or of another network) is refused
        with one line naming ``last.pt``.
        """
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.steps.optimizer.load_state_dict(checkpoint["optimizer"])
            self.steps.scheduler.load_state_dict(checkpoint["scheduler"])
            self.steps.scaler.load_state_dict(checkpoint["scaler"])
            self.state = TrainState(**checkpoint["state"])
            restore_rng_states(checkpoint["rng"])
            self.steps.set_total_epochs(self.total_epochs)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            raise InputError(
                self.last_path,
                f"checkpoint does not fit this run ({type(exc).__name__}: {first_line})",
            ) from None
        log.info("resumed from %s after epoch %d", self.last_path, self.state.epoch)

    # -- epochs --------------------------------------------------------------------------------

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (:meth:`StepRunner.run_epoch`); the mean losses and pause seconds."""
        return self.steps.run_epoch(epoch, self.state, self.thermal_pause)

    def thermal_pause(self) -> float:
        """Wait while too hot; the pause length in seconds (ThermalTimeout propagates)."""
        event = self.guard.wait_until_cool()
        return 0.0 if event is None else float(event.duration_s)

    def validate(self) -> dict[str, Any]:
        """Every rank validates its share; all ranks get the same summary."""
        local = validate_cases(
            self.model,
            shard(self.val_cases, self.context),
            self.config.patch_size,
            self.device.type,
            self.config.val_step_fraction,
        )
        return summarize_results(gather_lists(local, self.context))

    # -- the run -----------------------------------------------------------------------------

    def fit(self, checkpoint: dict[str, Any] | None = None) -> TrainState:
        """Train to ``config.epochs`` (or early stop), after ``checkpoint`` if resuming."""
        if checkpoint is not None:
            self.load(checkpoint)
        elif self.state.epoch == 0:
            # A checkpoint before the first step, so even a thermal timeout in epoch 1 leaves one.
            self.save_last()
        try:
            trained = False
            while self.state.epoch < self.total_epochs and not self.should_stop():
                if not self.budget_allows_an_epoch():
                    break
                self.one_epoch()
                trained = True
            if trained and self.planner is not None:
                self.validate_if_unscored()
            # Refit once per final model: again when a resumed run trained further epochs.
            refit = self.config.head_refit and (trained or not self.state.head_refitted)
            if refit and not self.classifier:
                log.warning("--head-refit skipped: no training case has a subtype label")
            elif refit:
                self.run_head_refit()
        except ThermalTimeout as exc:
            raise ThermalTimeout(
                f"{exc}; training stopped, {self.last_path} holds epoch {self.state.epoch}: "
                "continue with --resume",
                exc.event,
            ) from exc
        if self.context.is_main:
            self.write_summary()
        return self.state

    @property
    def total_epochs(self) -> int:
        """The epochs this run trains: the time budget's plan, or ``config.epochs``."""
        planned = self.state.planned_epochs
        return self.config.epochs if planned is None else planned

    def budget_allows_an_epoch(self) -> bool:
        """Under a time budget, (re)plan the epoch count before an epoch
        (:meth:`EpochPlanner.before_epoch`); False when none fits any more."""
        if self.planner is None:
            return True
        return self.planner.before_epoch(self.state, self.steps.set_total_epochs)

    def validate_if_unscored(self) -> None:
        """Validate the last epoch's weights when the budget ended training before the epoch
        that was planned to validate (its time was kept back for this)."""
        last = self.state.history[-1] if self.state.history else {}
        if "val_s" in last or "phase" in last or not self.val_cases:
            return
        start = self.clock()
        record: dict[str, Any] = {"epoch": self.state.epoch, "phase": "final_validation"}
        self.score(record, validate=True)
        record["seconds"] = self.clock() - start
        self.close_phase(
            record, f"validation after epoch {self.state.epoch}, the time budget's last"
        )

    def should_stop(self) -> bool:
        patience = self.config.patience
        if patience and self.state.stale_validations >= patience:
            log.info(
                "early stop: no better validation score for %d validations (best %.4f at epoch %d)",
                self.state.stale_validations,
                self.state.best_score,
                self.state.best_epoch,
            )
            return True
        return False

    def one_epoch(self) -> None:
        epoch = self.state.epoch
        start = self.clock()
        record: dict[str, Any] = {"epoch": epoch + 1, **self.run_epoch(epoch)}
        record["lr"] = self.steps.optimizer.param_groups[0]["lr"]
        record["train_s"] = self.clock() - start
        due = (epoch + 1) % self.config.val_every == 0 or epoch + 1 == self.total_epochs
        measuring = self.planner is not None and self.planner.measuring
        self.score(record, validate=due or measuring)
        record["seconds"] = self.clock() - start
        self.state.epoch = epoch + 1
        self.close_phase(record, epoch_line(record, self.total_epochs))
        if self.planner is not None:
            # The whole epoch as the budget sees it: steps, checkpoint, metrics and curves.
            validation_s = record.get("val_s")
            self.planner.record_epoch(self.clock() - start - (validation_s or 0.0), validation_s)

    def run_head_refit(self) -> None:
        """``--head-refit``: refit the subtype head on the training cases' runtime tiles
        (:func:`edgepanc.training.head_refit.refit_phase`), validate, and log it as a row of its
        own (``"phase": "head_refit"``, the epoch of the weights it refitted). The best checkpoint
        and bundle follow the combined score as after any validation."""
        from edgepanc.training.head_refit import refit_phase

        start = self.clock()
        record: dict[str, Any] = {"epoch": self.state.epoch, "phase": "head_refit"}
        record.update(
            refit_phase(
                self.model,
                self.train_cases,
                self.config,
                self.device,
                self.context,
                self.thermal_pause,
            )
        )
        record["train_s"] = self.clock() - start
        self.score(record, validate=True)
        record["seconds"] = self.clock() - start
        self.state.head_refitted = True
        self.close_phase(record, refit_line(record))

    def score(self, record: dict[str, Any], validate: bool) -> None:
        """Validate into ``record`` when ``validate`` and keep the best model. Without validation
        cases (the runner draws a split when the data set has none) nothing is scored: a score
        is never made up."""
        if validate and self.val_cases:
            val_start = self.clock()
            record.update(self.validate())
            record["val_s"] = self.clock() - val_start
            self.update_best(record)

    def close_phase(self, record: dict[str, Any], line: str) -> None:
        """Add the phase's row to the history; log it, checkpoint and write the metrics (rank 0)."""
        self.state.history.append(record)
        if self.context.is_main:
            log.info(line)
            self.save_last()
            write_metrics(self.run_dir, self.state.history)
            plot_curves(self.state.history, self.run_dir / "curves.png")
        barrier(self.context)

    def update_best(self, record: dict[str, Any]) -> None:
        score = float(record["combined_score"])
        if score > self.state.best_score:
            self.state.best_score = score
            self.state.best_epoch = record["epoch"]
            self.state.best_metrics = {k: v for k, v in record.items() if k != "pause_s"}
            self.state.stale_validations = 0
            if self.context.is_main:
                save_checkpoint(self.run_dir / "best.pt", self.checkpoint_state())
                self.write_bundle()
        else:
            self.state.stale_validations += 1

    # -- the bundle and the summary ---------------------------------------------------------

    def write_bundle(self) -> None:
        """Make the run folder a model bundle: best weights + model.json (kind "trained")."""
        write_run_bundle(
            self.run_dir, self.model, self.plan, self.state, self.config, self.classifier
        )

    def write_summary(self) -> None:
        elapsed = self.clock() - self.started
        timing = {"budget_s": None, "planned_epochs": None, "elapsed_s": round(elapsed, 3)}
        if self.planner is not None:
            timing = self.planner.report(self.state, elapsed)
        write_run_summary(self.run_dir, self.state, self.guard, self.device, self.amp_dtype, timing)
