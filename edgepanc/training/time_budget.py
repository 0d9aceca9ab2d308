"""``--time-budget``: how many epochs fit the wall time a user gives the whole run.

The first epoch is measured (its training steps, checkpoint and logs, and a validation of a few
cases scaled by their share of the validation tiles,
:meth:`~edgepanc.training.run_validation.RunValidation.probe`); from then on, before every epoch, the epochs that still fit are reckoned from the
measured times, keeping back the time of the final validation, of the head refit
(estimated from the training step's seconds per sample: the refit passes at most a few tiles of
each training case forward once, then fits the small head on what it kept), of choosing the
lesion margins when the validations do not score them (:data:`MARGIN_FINISH_VALIDATIONS` when
only the refit's validation does, :data:`LESION_MARGIN_VALIDATIONS` for a pass of their own)
and a safety margin. After the
first few epochs the count never grows past the settled plan: it shrinks while the machine runs
slow and grows back (up to that plan) when the pace returns, so the learning-rate schedule ends
where it was planned and a passing slowdown does not cut the run short.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Kept back from the budget for what is not measured: writing the bundle and summary, the
# interpreter's start-up, and the noise of a shared machine.
SAFETY_MARGIN = 0.03
# The head refit reads at most this many tiles of each training case (HeadRefitConfig's
# max_tiles_per_case; a test keeps the two equal), each one forward pass.
REFIT_TILES_PER_CASE = 8
# A forward pass of one tile, over a training step's time per sample (forward and backward are
# about 1:2; rounded up, since a shared machine's pace varies).
FORWARD_SHARE = 0.5
REFIT_FIT_S = 15.0  # the head's own fit on the kept features: 1,000 small steps, and set-up
# Epochs over which the plan may still grow as the pace settles (the learning rate is still
# warming up then); after them it never exceeds the highest plan made by then.
SETTLING_EPOCHS = 3
GROW_BACK_EPOCHS = 2  # the least a settled plan grows back by (or 2% of it, if more)
# Choosing the lesion margins segments the choosing cases once and restores each with every
# candidate margin: 1.3-1.9 validations' time on the CPU recipe (docs/measurements/lesion_margins.md).
LESION_MARGIN_VALIDATIONS = 2.0
# When a validation scores the margins from its own network pass, only the six extra finishing
# steps per case remain: 0.33 of a validation there (118 against 89 s).
MARGIN_FINISH_VALIDATIONS = 0.4


@dataclass(frozen=True)
class Measured:
    """Seconds measured so far: one epoch of training (steps, checkpoint, logs), one validation
    of all validation cases, and the counts that scale an epoch to the head refit (training
    cases, the samples an epoch trains on: steps x batch, and the tiles the refit will read when
    they were counted, :func:`~edgepanc.training.head_refit.count_refit_tiles`).

    Example: ``Measured(epoch_s=30.0, validation_s=12.0, val_cases=12, train_cases=88,
    samples_per_epoch=100, refit_tiles=310)``.
    """

    epoch_s: float
    validation_s: float
    val_cases: int
    train_cases: int
    samples_per_epoch: int
    refit_tiles: int | None = None  # None: at most REFIT_TILES_PER_CASE per training case
    margin_validations: float = 0.0  # what choosing the lesion margins costs, in validations

    def refit_s(self) -> float:
        """The head refit's estimate: one forward pass of its tiles at the training step's pace
        per sample, the head's own fit, then the validation that follows it.

        Example: ``Measured(30.0, 12.0, 12, 88, 100, refit_tiles=310).refit_s()`` ->
        ``310 * 0.3 * 0.5 + 15 + 12`` = 73.5.
        """
        per_sample = self.epoch_s / max(self.samples_per_epoch, 1)
        tiles = self.refit_tiles
        if tiles is None:
            tiles = REFIT_TILES_PER_CASE * self.train_cases
        return tiles * per_sample * FORWARD_SHARE + REFIT_FIT_S + self.validation_s


def seconds_for(
    done: int, total: int, measured: Measured, val_every: int, head_refit: bool
) -> float:
    """The measured time of epochs ``done + 1 .. total`` with their validations (every
    ``val_every`` epochs, and the last) and, with ``head_refit``, the refit.

    Example: ``seconds_for(1, 7, Measured(2.0, 3.0, 3, 6, 4), val_every=5, head_refit=False)`` ->
    ``6 * 2 + 2 * 3`` = 18.0 (validations after epochs 5 and 7).
    """
    if total <= done:
        return 0.0
    every = max(val_every, 1)
    validations = total // every - done // every + (1 if total % every else 0)
    validations += measured.margin_validations
    refit = measured.refit_s() if head_refit else 0.0
    return (total - done) * measured.epoch_s + validations * measured.validation_s + refit


class TimeBudget:
    """The wall time left to a run, on a clock tests can script.

    Example::

        >>> budget = TimeBudget(2700.0)  # --time-budget 45m, counted from now
        >>> budget.epochs_that_fit(done=1, measured=Measured(30.0, 12.0, 12, 88, 100), val_every=5,
        ...                        head_refit=True)
        76
    """

    def __init__(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
        margin: float = SAFETY_MARGIN,
    ) -> None:
        if not seconds > 0:
            raise ValueError(f"a time budget must be above 0 seconds, got {seconds}")
        self.seconds = float(seconds)
        self.clock = clock
        self.started = clock() if started is None else float(started)
        self.margin = margin

    def elapsed(self) -> float:
        return self.clock() - self.started

    def usable_left(self) -> float:
        """Seconds left before the budget less its safety margin."""
        return self.seconds * (1.0 - self.margin) - self.elapsed()

    def epochs_that_fit(
        self, done: int, measured: Measured, val_every: int, head_refit: bool
    ) -> int:
        """The run's total epoch count: ``done`` plus the epochs that fit in what is left after
        the final validation and (with ``head_refit``) the refit are kept back; at least one.

        Example: with 600 s left, 30 s epochs, 12 s validations every 5 epochs and no refit:
        ``(600 - 12) // (30 + 12 / 5)`` -> 18 more epochs.
        """
        left = self.usable_left()
        if measured.epoch_s <= 0:
            return max(1, done)
        # The first guess counts a validation every epoch, then whole epochs are added while
        # they and their validations (every val_every, and the last) still fit.
        total = done + max(0, math.floor(left / (measured.epoch_s + measured.validation_s)) - 1)
        while seconds_for(done, total + 1, measured, val_every, head_refit) <= left:
            total += 1
        while total > done and seconds_for(done, total, measured, val_every, head_refit) > left:
            total -= 1
        return max(1, total)

    def share(self, parts: int) -> TimeBudget:
        """One of ``parts`` equal shares of the time left, starting now (a fold of several).

        Example: ``TimeBudget(3600.0).share(3).seconds`` -> about 1200.
        """
        left = max(self.seconds - self.elapsed(), 1e-3)
        return TimeBudget(left / max(parts, 1), self.clock, margin=self.margin)


class EpochPlanner:
    """The run's epoch count under a :class:`TimeBudget`: measured on the first epoch of this
    process (which validates, to measure validation too), planned, revised while the pace settles,
    then lowered whenever the run falls behind.

    ``agree`` makes every process of a distributed run plan the same count (the mean over ranks).

    Example::

        >>> planner = EpochPlanner(TimeBudget(180.0), val_every=3, head_refit=False,
        ...                        train_cases=9, val_cases=3, samples_per_epoch=4)
        >>> planner.record_epoch(10.0, 2.0)
        >>> planner.plan(done=1, planned=None)  # (174.6 - 2) // (10 + 2/3) -> 1 + 16
        17
    """

    def __init__(
        self,
        budget: TimeBudget,
        val_every: int,
        head_refit: bool,
        train_cases: int,
        val_cases: int,
        samples_per_epoch: int,
        agree: Callable[[float], float] = float,
        refit_tiles: int | None = None,
        margin_validations: float = 0.0,
    ) -> None:
        self.budget = budget
        self.val_every = val_every
        self.head_refit = head_refit
        self.train_cases = train_cases
        self.val_cases = val_cases
        self.samples_per_epoch = samples_per_epoch
        self.agree = agree
        self.refit_tiles = refit_tiles
        self.margin_validations = margin_validations
        self.epoch_seconds: list[float] = []
        self.validation_s = 0.0
        self.validation_estimated = False  # validation_s is a probe's estimate, not a validation
        self.planned_s: float | None = None  # when the latest plan expects the run to end
        self.settled_epochs: int | None = None  # the highest plan while the pace settled

    @property
    def measuring(self) -> bool:
        """True until an epoch of this process has been measured."""
        return not self.epoch_seconds

    def record_epoch(
        self, epoch_s: float, validation_s: float | None, estimated: bool = False
    ) -> None:
        """An epoch's seconds without its validation, and the validation's when one ran (or,
        ``estimated``, what a probe of a few cases scales to)."""
        self.epoch_seconds.append(max(0.0, epoch_s))
        if validation_s is not None:
            self.validation_s = max(0.0, validation_s)
            self.validation_estimated = estimated

    def measured(self) -> Measured:
        # The recent pace (a shared machine changes speed), past the first epoch's set-up.
        recent = self.epoch_seconds[1:][-3:] or self.epoch_seconds
        return Measured(
            sum(recent) / len(recent),
            self.validation_s,
            self.val_cases,
            self.train_cases,
            self.samples_per_epoch,
            self.refit_tiles,
            self.margin_validations,
        )

    def plan(self, done: int, planned: int | None) -> int:
        """The total epoch count: the plan from the epochs measured so far while they are
        :data:`SETTLING_EPOCHS` or fewer (the first epoch pays the set-up), then what still fits
        but never more than the highest of those plans: fewer while the machine runs slow, back up
        to it when the pace returns (a contended spell must not end the run early). ``planned``
        (the current plan) stands in for that ceiling in a planner that did not make it, as after
        ``--resume``."""
        fit = self.budget.epochs_that_fit(done, self.measured(), self.val_every, self.head_refit)
        fit = int(self.agree(float(fit)))
        if planned is None or len(self.epoch_seconds) <= SETTLING_EPOCHS:
            planned = max(done, fit)
            self.settled_epochs = max(planned, self.settled_epochs or 0)
        else:
            ceiling = self.settled_epochs if self.settled_epochs is not None else planned
            # Grow back only by a margin, so that the plan does not flicker by an epoch (and
            # the schedule with it) as the pace wobbles.
            grows = fit >= planned + max(GROW_BACK_EPOCHS, planned // 50)
            planned = max(done, min(ceiling, fit if fit < planned or grows else planned))
        measured = self.measured()
        rest = seconds_for(done, planned, measured, self.val_every, self.head_refit)
        self.planned_s = self.budget.elapsed() + rest
        return planned

    def before_epoch(self, state: Any, set_total_epochs: Callable[[int], None]) -> bool:
        """Plan (or revise) ``state.planned_epochs`` before an epoch, once this process has
        measured one, telling ``set_total_epochs`` and the log of a change; whether another
        epoch fits.

        Example: ``planner.before_epoch(trainer.state, trainer.steps.set_total_epochs)``.
        """
        if self.measuring:
            return True  # the first epoch of this process is the measurement
        before = state.planned_epochs
        planned = self.plan(state.epoch, before)
        if planned != before:
            state.planned_epochs = planned
            set_total_epochs(planned)
            measured = self.measured()
            log.info(
                "time budget %s: %s epochs, ending after about %s (an epoch %.1f s, a "
                "validation %s%.1f s%s, %s used)",
                format_duration(self.budget.seconds),
                f"{planned} planned" if before is None else f"now {planned} (was {before})",
                format_duration(self.planned_s or 0.0),
                measured.epoch_s,
                "estimated " if self.validation_estimated else "",
                measured.validation_s,
                f", head refit about {measured.refit_s():.0f} s" if self.head_refit else "",
                format_duration(self.budget.elapsed()),
            )
        return state.epoch < planned

    def report(self, state: Any, elapsed_s: float) -> dict[str, Any]:
        """The run's time for ``summary.json`` (budget, planned epochs and end, elapsed), also
        logged.

        Example: ``planner.report(trainer.state, 171.2)["within_budget"]`` -> ``True``.
        """
        timing = {
            "budget_s": self.budget.seconds,
            "planned_epochs": state.planned_epochs,
            "elapsed_s": round(elapsed_s, 3),
            "planned_s": self.planned_s,
            "within_budget": elapsed_s <= self.budget.seconds,
        }
        log.info(
            "time budget %s: %s epochs planned to end after %s, %d trained; %s used (%s)",
            format_duration(self.budget.seconds),
            state.planned_epochs,
            format_duration(self.planned_s or 0.0),
            state.epoch,
            format_duration(elapsed_s),
            "within the budget" if timing["within_budget"] else "OVER the budget",
        )
        return timing


def format_duration(seconds: float) -> str:
    """``2712.4`` -> ``"45 min 12 s"``; under a minute: ``"42 s"``.

    Example: ``format_duration(90)`` -> ``"1 min 30 s"``.
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60} s"


__all__ = [
    "LESION_MARGIN_VALIDATIONS",
    "MARGIN_FINISH_VALIDATIONS",
    "EpochPlanner",
    "Measured",
    "TimeBudget",
    "format_duration",
    "seconds_for",
]
