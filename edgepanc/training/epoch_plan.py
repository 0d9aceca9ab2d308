"""Which epochs a run trains and which of them validate (:class:`EpochPlan`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from edgepanc.training.config import TrainConfig
from edgepanc.training.distributed import DistContext, mean_across_ranks
from edgepanc.training.time_budget import (
    LESION_MARGIN_VALIDATIONS,
    MARGIN_FINISH_VALIDATIONS,
    EpochPlanner,
    TimeBudget,
)
from edgepanc.training.train_state import TrainState


class EpochPlan:
    """The run's schedule: ``config.epochs`` or, under a :class:`TimeBudget`, the count its
    :class:`EpochPlanner` reckons before each epoch; every ``val_every``-th epoch and the last
    validate (under a budget the measured first times a probe of a few cases instead);
    ``patience`` validations without a better score stop the run early.

    Example::

        >>> plan = EpochPlan(config, budget=None)  # config.epochs=10, val_every=5
        >>> plan.validates(4, TrainState(epoch=4)), plan.validates(5, TrainState(epoch=5))
        (True, False)
        >>> plan.another_epoch(TrainState(epoch=10), set_total_epochs=print)
        False
    """

    def __init__(
        self,
        config: TrainConfig,
        budget: TimeBudget | None,
        head_refit: bool = False,
        train_cases: int = 0,
        val_cases: int = 0,
        context: DistContext | None = None,
        refit_tiles: int | None = None,
        margin_cost: float = 0.0,
    ) -> None:
        self.config = config
        self.planner: EpochPlanner | None = None
        if budget is not None:
            context = context or DistContext()
            self.planner = EpochPlanner(
                budget,
                config.val_every,
                head_refit,
                train_cases,
                val_cases,
                config.steps_per_epoch * config.batch_size,
                agree=lambda value: mean_across_ranks([value], context)[0],
                refit_tiles=refit_tiles,
                margin_validations=margin_cost,
            )

    @classmethod
    def for_run(
        cls,
        config: TrainConfig,
        budget: TimeBudget | None,
        head_refit: bool,
        train_cases: Sequence[Any],
        validated_cases: int,
        context: DistContext | None = None,
        margins_in: tuple[bool, bool] = (False, False),
    ) -> EpochPlan:
        """The plan of a run over prepared ``train_cases``: under a budget the head refit's time
        is kept back from the tiles it will read, counted from the labels (no network needed);
        ``margins_in``: whether every validation, and whether the refit's validation, scores the
        lesion margins (:func:`margin_validations`).

        Example: ``EpochPlan.for_run(config, TimeBudget(1800.0), True, train_cases, 12)``.
        """
        from edgepanc.training.head_refit import count_refit_tiles

        tiles = count_refit_tiles(train_cases, config) if head_refit and budget else None
        return cls(
            config,
            budget,
            head_refit,
            len(train_cases),
            validated_cases,
            context,
            tiles,
            margin_validations(config, *margins_in),
        )

    def keep_back_margin_pass(self) -> None:
        """A resumed run's best validation ran before the resume and its margin trials are
        gone: keep a pass of their own back from the budget, in case no later one is better."""
        if self.planner is not None and self.config.lesion_margins:
            self.planner.margin_validations = LESION_MARGIN_VALIDATIONS

    def total(self, state: TrainState) -> int:
        """The epochs this run trains: the time budget's plan, or ``config.epochs``."""
        return state.total_epochs(self.config.epochs)

    def another_epoch(self, state: TrainState, set_total_epochs: Callable[[int], None]) -> bool:
        """Whether the run trains another epoch: not past the total, patience not run out and,
        under a time budget, another epoch still fits (the plan revised before it, see
        :meth:`EpochPlanner.before_epoch`, which tells ``set_total_epochs`` of a change)."""
        if state.epoch >= self.total(state) or state.patience_exhausted(self.config.patience):
            return False
        return self.planner is None or self.planner.before_epoch(state, set_total_epochs)

    def validates(self, epoch: int, state: TrainState) -> bool:
        """Whether (0-based) ``epoch`` ends with a validation: each ``val_every``-th and the
        last."""
        done = epoch + 1
        return done % self.config.val_every == 0 or done == self.total(state)

    def probes_validation(self, epoch: int, state: TrainState) -> bool:
        """Whether ``epoch``, the one a time budget measures, times a validation probe
        (:meth:`~edgepanc.training.run_validation.RunValidation.probe`): when it does not
        validate anyway."""
        measuring = self.planner is not None and self.planner.measuring
        return measuring and not self.validates(epoch, state)

    def record_epoch(self, seconds: float, record: dict[str, Any]) -> None:
        """A whole epoch's seconds as a time budget sees them (steps, checkpoint, metrics and
        curves, and a validation or a probe, whose time ``record`` holds): the validation's
        time is its own (``val_s``) or the probe's estimate (``val_s_estimated``)."""
        if self.planner is None:
            return
        spent = record.get("val_s", record.get("val_probe_s", 0.0))
        validation_s = record.get("val_s", record.get("val_s_estimated"))
        self.planner.record_epoch(seconds - spent, validation_s, "val_s" not in record)

    def validates_at_the_end(self, state: TrainState, trained: bool) -> bool:
        """Whether the last epoch's weights still need a validation: the budget ended training
        before the epoch that was planned to validate (its time was kept back for this)."""
        last = state.history[-1] if state.history else {}
        unscored = "val_s" not in last and "phase" not in last
        return trained and self.planner is not None and unscored

    def timing(self, state: TrainState, elapsed_s: float) -> dict[str, Any]:
        """The run's time for ``summary.json``; under a budget, :meth:`EpochPlanner.report`."""
        if self.planner is None:
            return {"budget_s": None, "planned_epochs": None, "elapsed_s": round(elapsed_s, 3)}
        return self.planner.report(state, elapsed_s)


def margin_validations(config: TrainConfig, in_validations: bool, in_refit: bool) -> float:
    """What choosing the lesion margins adds to a budget's plan, in validations: nothing without
    margins or when every validation scores them (each validation's measured time holds their
    finishing steps), those finishing steps when only the refit's validation does, else a pass
    of their own.

    Example: ``margin_validations(TrainConfig(data=d, out=o), False, in_refit=True)`` -> ``0.4``.
    """
    if not config.lesion_margins or in_validations:
        return 0.0
    return MARGIN_FINISH_VALIDATIONS if in_refit else LESION_MARGIN_VALIDATIONS


__all__ = ["EpochPlan", "margin_validations"]
