"""What the training loop carries between epochs (:class:`TrainState`, saved in every checkpoint)
and its two rules: the best validation score so far, and patience running out."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from edgepanc.training.selection import choosing_score

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The epoch and step counters, the best score, early stopping and the history.

    Example::

        >>> state = TrainState()
        >>> state.keep_score({"epoch": 1, "combined_score": 0.8})
        True
        >>> state.keep_score({"epoch": 2, "combined_score": 0.7}), state.stale_validations
        (False, 1)
    """

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken
    best_score: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict[str, Any] = field(default_factory=dict)
    stale_validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    head_refitted: bool = False  # --head-refit has run (after the last epoch)
    planned_epochs: int | None = None  # the epoch count a time budget planned (else epochs)

    def total_epochs(self, configured: int) -> int:
        """The epochs the run trains: the time budget's plan, or ``configured``.

        Example: ``TrainState(planned_epochs=7).total_epochs(50)`` -> ``7``.
        """
        return configured if self.planned_epochs is None else self.planned_epochs

    def keep_score(self, record: dict[str, Any], force: bool = False) -> bool:
        """Take a validated ``record``'s combined score: True when it is a new best (kept, with
        the record's metrics), else one more stale validation. ``force`` keeps it whatever it
        scored (a refitted head that no held-out case judged).

        Example: ``TrainState().keep_score({"epoch": 1, "combined_score": 0.5})`` -> ``True``.
        """
        score = choosing_score(record)  # the selection cases' when the run holds them out
        if force or score > self.best_score:  # a NaN score is never a best
            self.best_score = score
            self.best_epoch = record["epoch"]
            self.best_metrics = {k: v for k, v in record.items() if k != "pause_s"}
            self.stale_validations = 0
            return True
        self.stale_validations += 1
        return False

    def patience_exhausted(self, patience: int) -> bool:
        """True (and logged) once ``patience`` validations in a row did not improve the best
        score; ``0`` never stops.

        Example: ``TrainState(stale_validations=3).patience_exhausted(3)`` -> ``True``.
        """
        if not patience or self.stale_validations < patience:
            return False
        log.info(
            "early stop: no better validation score for %d validations (best %.4f at epoch %d)",
            self.stale_validations,
            self.best_score,
            self.best_epoch,
        )
        return True


__all__ = ["TrainState"]
