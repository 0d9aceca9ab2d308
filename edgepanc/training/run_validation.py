"""Scoring a training run's weights on its validation and selection cases (:class:`RunValidation`).

Every rank validates its share of the cases and all ranks get the same summary. A validation can
also score the lesion-margin candidates on the cases that choose the margins (the selection cases
when the run holds them out, else the validation cases), from the same network pass: each case's
sliding-window result is finished once more per candidate, about a third of a validation's time
on the CPU recipe against a whole pass of its own (docs/measurements/lesion_margins.md). The
trainer asks for that in the validation of the final weights and, when a run validates only a
few times (:data:`MARGINS_IN_EVERY_VALIDATION_UP_TO`), in every validation, so that the best
weights come with their margin trials and no pass of their own follows training.

A time budget needs a validation's time before it plans the epochs; :meth:`RunValidation.probe`
validates a few cases spread over their sizes instead of all of them (with the margin candidates
when the validations will score them), and the time scales by the share of the sliding-window
tiles they hold (a case's validation time follows its tile count).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from edgepanc.postprocessing.lesion_margin import MARGIN_CANDIDATES_MM
from edgepanc.training.config import TrainConfig
from edgepanc.training.dataset import PreparedCase
from edgepanc.training.distributed import DistContext, gather_lists, shard
from edgepanc.training.lesion_margins import trials_from_results
from edgepanc.training.selection import selection_metrics
from edgepanc.training.validation import (
    CaseResult,
    summarize_results,
    validate_cases,
    validation_precision,
)

MarginTrials = tuple[np.ndarray, list[int]]  # [cases, candidates] lesion Dice, predicted subtypes
# Cases a time budget's probe validates: of 36 validation cases a seventh of a validation's time.
PROBE_CASES = 5
# Scoring the margins costs 0.4 of a validation each time, a pass of their own 2 (time_budget):
# up to this many planned validations, scoring them in every one costs no more than that pass.
MARGINS_IN_EVERY_VALIDATION_UP_TO = 5


class RunValidation:
    """Validates ``model`` on ``val_cases`` (they report) and ``select_cases`` (they choose,
    when there are any) at the precision of the training's ``(device, autocast dtype)``;
    ``classifier``: the model names subtypes (lesion margins need one); ``clock`` times the
    probe (tests script it).

    ``margin_trials``: the lesion-margin trials of the latest validation when it was asked for
    them (:meth:`validate` with ``margins=True``), else None; ``best_margin_trials``: those of
    the validation that chose the best weights (:meth:`keep_margin_trials`), if it ran them.
    ``margins_every_time``: the run plans few enough validations (``config.epochs`` over
    ``val_every``) that each one scores the margins (:meth:`margins_due`).

    Example::

        >>> validation = RunValidation(model, config, (device, None), val_cases, [], context)
        >>> validation.validate(margins=True)["whole_dsc"], validation.margin_trials[0].shape
        (0.91, (36, 7))
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        device_and_dtype: tuple[torch.device, torch.dtype | None],
        val_cases: Sequence[PreparedCase],
        select_cases: Sequence[PreparedCase],
        context: DistContext,
        classifier: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.config = config
        self.device = device_and_dtype[0]
        self.precision = validation_precision(device_and_dtype[1])
        self.val_cases = list(val_cases)
        self.select_cases = list(select_cases)
        self.context = context
        self.classifier = classifier
        self.clock = clock
        self.margin_trials: MarginTrials | None = None
        self.best_margin_trials: MarginTrials | None = None
        planned = -(-config.epochs // max(config.val_every, 1))
        self.margins_every_time = planned <= MARGINS_IN_EVERY_VALIDATION_UP_TO

    def margins_due(self, refit: bool = False, last: bool = False) -> bool:
        """Whether a validation of an epoch's weights (``last``: of the last epoch's,
        ``refit``: of the refitted head) also scores the lesion margins: the final weights'
        always, any other's when the run validates only a few times, unless a head refit
        follows that is kept whatever it scores (no selection cases judge it)."""
        if not (self.config.lesion_margins and self.classifier):
            return False
        if refit:
            return True
        if self.config.head_refit and not self.select_cases:
            return False
        return last or self.margins_every_time

    def keep_margin_trials(self) -> None:
        """The latest validation chose the best weights: its margin trials (or none) are
        theirs."""
        self.best_margin_trials = self.margin_trials

    def timed_probe(self) -> dict[str, float]:
        """Time :meth:`probe` and scale it to a whole validation for the time budget:
        ``val_probe_s``, ``val_s_estimated``."""
        start = self.clock()
        share = self.probe(margins=self.margins_due())
        spent = self.clock() - start
        return {"val_probe_s": spent, "val_s_estimated": spent / max(share, 1e-9)}

    def validate(self, margins: bool = False) -> dict[str, Any]:
        """The validation cases' summary, and the selection cases' as ``selection_*`` keys;
        with ``margins`` the choosing cases also score every margin candidate."""
        self.margin_trials = None
        summary = self.summarize(self.val_cases, margins and not self.select_cases)
        if self.select_cases:
            summary.update(selection_metrics(self.summarize(self.select_cases, margins)))
        return summary

    def summarize(self, cases: Sequence[PreparedCase], margins: bool = False) -> dict[str, Any]:
        """The summary of ``cases`` (:func:`summarize_results`); with ``margins`` their
        lesion-margin trials become :attr:`margin_trials`."""
        results = self.results(cases, margins)
        if margins and results:
            self.margin_trials = trials_from_results(results)
        return summarize_results(results)

    def probe(self, count: int = PROBE_CASES, margins: bool = False) -> float:
        """Validate ``count`` of this rank's cases (all cases, validation and selection), spread
        over their tile counts from the fewest to the most, and return the share of the rank's
        tiles they hold: their time over that share estimates a whole validation's. With
        ``margins`` the choosing cases among them also score the margin candidates, as
        :meth:`validate` would. The scores are not kept.

        Example: ``seconds / validation.probe()`` -> a validation's seconds, about.
        """
        from edgepanc.inferers.sliding_window import plan_sliding_window

        choosing = [margins and not self.select_cases] * len(self.val_cases)
        choosing += [margins] * len(self.select_cases)
        cases = shard(self.val_cases + self.select_cases, self.context)
        choosing = shard(choosing, self.context)
        if not cases:
            return 1.0
        step = self.config.val_step_fraction
        tiles = np.array(
            [
                len(plan_sliding_window(c.image.shape, self.config.patch_size, step).tiles)
                for c in cases
            ],
            dtype=np.float64,
        )
        order = np.argsort(tiles, kind="stable")
        spread = np.linspace(0, len(cases) - 1, min(count, len(cases))).round().astype(int)
        picked = np.unique(order[spread])
        for scores_margins in (False, True):
            group = [cases[i] for i in picked if choosing[i] == scores_margins]
            if group:
                validate_cases(
                    self.model,
                    group,
                    self.config.patch_size,
                    self.device.type,
                    step,
                    self.precision,
                    MARGIN_CANDIDATES_MM if scores_margins else (),
                )
        return float(tiles[picked].sum() / tiles.sum())

    def results(self, cases: Sequence[PreparedCase], margins: bool = False) -> list[CaseResult]:
        """Every rank validates its share of ``cases``; all ranks get every result."""
        local = validate_cases(
            self.model,
            shard(cases, self.context),
            self.config.patch_size,
            self.device.type,
            self.config.val_step_fraction,
            self.precision,
            MARGIN_CANDIDATES_MM if margins else (),
        )
        return gather_lists(local, self.context)


__all__ = ["MARGINS_IN_EVERY_VALIDATION_UP_TO", "PROBE_CASES", "MarginTrials", "RunValidation"]
