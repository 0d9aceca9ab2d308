"""The training loop: :class:`Trainer` runs epochs, validates, checkpoints and logs.

Precision: fp16 autocast with ``torch.amp.GradScaler("cuda")`` on CUDA; on CPU, fp32 by default.
``--amp`` on CPU switches on bf16 autocast, which halves the step on a CPU with native bf16 and is
an order of magnitude slower on one without, hence fp32 as the CPU default (timings in
docs/measurements/cpu_recipe.md). Validation runs at the same precision
(:func:`~edgepanc.training.validation.validation_precision`). Optimiser: AdamW with linear
warm-up then cosine decay per step, gradient norm clipped at ``config.grad_clip`` (the steps:
:mod:`edgepanc.training.steps`). The
best checkpoint is chosen by :func:`edgepanc.metrics.combined_score` of the validation metrics
(of the held-out selection cases', :mod:`~edgepanc.training.selection`, when the run has them);
``patience`` validations without improvement stop the run early.

The pieces: the steps in :mod:`~edgepanc.training.steps`, the schedule (epoch count, time budget,
which epochs validate, early stopping) in :mod:`~edgepanc.training.epoch_plan`, the checkpoints
and bundle in :mod:`~edgepanc.training.run_checkpoints`, what is carried between epochs in
:mod:`~edgepanc.training.train_state`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgepanc.backends import devices
from edgepanc.errors import InputError
from edgepanc.thermal import ThermalGuard, ThermalTimeout
from edgepanc.training.augmentation import AugmentationConfig
from edgepanc.training.config import TrainConfig
from edgepanc.training.dataset import PreparedCase
from edgepanc.training.distributed import DistContext, barrier
from edgepanc.training.epoch_plan import EpochPlan
from edgepanc.training.lesion_margins import choose_trainer_margins
from edgepanc.training.logs import epoch_line, plot_curves, refit_line, write_metrics
from edgepanc.training.outputs import write_run_summary
from edgepanc.training.run_checkpoints import RunCheckpoints
from edgepanc.training.run_validation import RunValidation
from edgepanc.training.selection import who_chose
from edgepanc.training.steps import StepRunner
from edgepanc.training.time_budget import TimeBudget
from edgepanc.training.train_state import TrainState

log = logging.getLogger(__name__)


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


def training_device(
    config: TrainConfig, context: DistContext
) -> tuple[torch.device, torch.dtype | None]:
    """The device and autocast dtype a run trains with (torch's thread count set as
    ``config.threads`` asks).

    Example: ``training_device(config, DistContext())`` -> ``(device(type='cpu'), None)`` for
    ``device="cpu"`` without ``--amp``.
    """
    device = resolve_device(config.device, context)
    if config.threads is not None:
        # One thread per process avoids OpenMP oversubscription on a small or shared CPU.
        torch.set_num_threads(config.threads)
    amp_dtype = autocast_dtype(device, config.amp)
    warn_if_bf16_is_emulated(device, amp_dtype)
    return device, amp_dtype


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

    The steps are :class:`StepRunner`'s, the schedule :class:`EpochPlan`'s, the checkpoints
    :class:`RunCheckpoints`'; this runs the phases (epochs, the validation a time budget left
    out, the head refit) and records each as a row of the history. ``guard`` is injectable so
    tests can script temperatures; ``augmentation`` too.

    Example::

        >>> trainer = Trainer(config, Path("work/a"), train_cases, val_cases, plan,
        ...                   network_config, ThermalGuard())
        >>> trainer.fit().best_epoch
        5
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
        select_cases: Sequence[PreparedCase] = (),
    ) -> None:
        self.config = config
        # One clock for every duration the run measures, so that tests can script it.
        self.clock = budget.clock if budget is not None else time.monotonic
        self.started = budget.started if budget is not None else self.clock()
        self.run_dir = Path(run_dir)
        self.context = context or DistContext()
        self.device, self.amp_dtype = training_device(config, self.context)
        self.guard = guard
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)
        self.select_cases = list(select_cases)  # choose the model; val_cases only report
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
        self.validation = RunValidation(
            self.model,
            config,
            (self.device, self.amp_dtype),
            self.val_cases,
            self.select_cases,
            self.context,
            self.classifier,
            self.clock,
        )
        self.state = TrainState()
        self.checkpoints = RunCheckpoints(
            config, self.run_dir, self.steps, self.context, plan, self.classifier
        )
        refit = config.head_refit and self.classifier
        validated = len(self.val_cases) + len(self.select_cases)
        self.epoch_plan = EpochPlan.for_run(
            config,
            budget,
            refit,
            self.train_cases,
            validated,
            self.context,
            # The refit's validation alone scores them when nothing can turn the refit down.
            margins_in=(self.validation.margins_due(), refit and not self.select_cases),
        )

    def save_last(self) -> None:
        self.checkpoints.save_last(self.state)

    def start_from(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Initialise the weights from a trained bundle's (``--init-from``, read from
        ``source``)."""
        self.checkpoints.start_from(state, source)

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (:meth:`StepRunner.run_epoch`); the mean losses and pause seconds."""
        return self.steps.run_epoch(epoch, self.state, self.thermal_pause)

    def thermal_pause(self) -> float:
        """Wait while too hot; the pause length in seconds (ThermalTimeout propagates)."""
        event = self.guard.wait_until_cool()
        return 0.0 if event is None else float(event.duration_s)

    def fit(self, checkpoint: dict[str, Any] | None = None) -> TrainState:
        """Train to ``config.epochs`` (or early stop), after ``checkpoint`` if resuming."""
        if checkpoint is not None:
            self.state = self.checkpoints.restore(checkpoint)
            if self.state.best_epoch >= 0 and self.validation.margins_due():
                self.epoch_plan.keep_back_margin_pass()
        elif self.state.epoch == 0:
            # A checkpoint before the first step, so even a thermal timeout in epoch 1 leaves one.
            self.save_last()
        try:
            trained = False
            while self.epoch_plan.another_epoch(self.state, self.steps.set_total_epochs):
                self.one_epoch()
                trained = True
            if self.epoch_plan.validates_at_the_end(self.state, trained) and self.val_cases:
                self.final_validation()
            # Refit once per final model: again when a resumed run trained further epochs.
            refit = self.config.head_refit and (trained or not self.state.head_refitted)
            if refit and not self.classifier:
                log.warning("--head-refit skipped: no training case has a subtype label")
            elif refit:
                self.run_head_refit()
            if self.config.lesion_margins and self.context.is_main:
                choose_trainer_margins(self)
        except ThermalTimeout as exc:
            raise ThermalTimeout(
                f"{exc}; training stopped, {self.checkpoints.last_path} holds epoch "
                f"{self.state.epoch}: continue with --resume",
                exc.event,
            ) from exc
        if self.context.is_main:
            elapsed = self.clock() - self.started
            timing = self.epoch_plan.timing(self.state, elapsed)
            chose = who_chose(len(self.select_cases), len(self.val_cases))
            write_run_summary(
                self.run_dir, self.state, self.guard, self.device, self.amp_dtype, timing, chose
            )
        return self.state

    def one_epoch(self) -> None:
        epoch = self.state.epoch
        start = self.clock()
        record: dict[str, Any] = {"epoch": epoch + 1, **self.run_epoch(epoch)}
        record["lr"] = self.steps.optimizer.param_groups[0]["lr"]
        record["train_s"] = self.clock() - start
        last = epoch + 1 == self.epoch_plan.total(self.state)
        validate = self.epoch_plan.validates(epoch, self.state)
        self.score(record, validate, margins=self.validation.margins_due(last=last))
        if self.epoch_plan.probes_validation(epoch, self.state):
            record.update(self.validation.timed_probe())
        record["seconds"] = self.clock() - start
        self.state.epoch = epoch + 1
        self.close_phase(record, epoch_line(record, self.epoch_plan.total(self.state)))
        # The whole epoch as the budget sees it: steps, checkpoint, metrics and curves.
        self.epoch_plan.record_epoch(self.clock() - start, record)

    def final_validation(self) -> None:
        """Validate the last epoch's weights, a row of its own (``"phase": "final_validation"``)."""
        start = self.clock()
        record: dict[str, Any] = {"epoch": self.state.epoch, "phase": "final_validation"}
        self.score(record, validate=True, margins=self.validation.margins_due(last=True))
        record["seconds"] = self.clock() - start
        self.close_phase(
            record, f"validation after epoch {self.state.epoch}, the time budget's last"
        )

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
        # Only held-out selection cases may turn it down (docs/measurements/default_train_command.md).
        self.score(
            record,
            validate=True,
            choose=bool(self.select_cases),
            margins=self.validation.margins_due(refit=True),
        )
        record["seconds"] = self.clock() - start
        self.state.head_refitted = True
        self.close_phase(record, refit_line(record))

    def score(
        self, record: dict[str, Any], validate: bool, choose: bool = True, margins: bool = False
    ) -> None:
        """Validate into ``record`` when ``validate`` (``margins``: with the lesion-margin
        trials) and keep the best model (``choose`` False: keep this one). Without validation
        cases (the runner draws a split when the data set has none) nothing is scored: a score
        is never made up."""
        if validate and self.val_cases:
            val_start = self.clock()
            record.update(self.validation.validate(margins))
            record["val_s"] = self.clock() - val_start
            if self.state.keep_score(record, force=not choose):
                self.checkpoints.save_best(self.state)
                self.validation.keep_margin_trials()

    def close_phase(self, record: dict[str, Any], line: str) -> None:
        """Add the phase's row to the history; log it, checkpoint and write the metrics (rank 0)."""
        self.state.history.append(record)
        if self.context.is_main:
            log.info(line)
            self.save_last()
            write_metrics(self.run_dir, self.state.history)
            plot_curves(self.state.history, self.run_dir / "curves.png")
        barrier(self.context)


__all__ = [
    "Trainer",
    "TrainState",
    "autocast_dtype",
    "resolve_device",
    "training_device",
    "warn_if_bf16_is_emulated",
]
