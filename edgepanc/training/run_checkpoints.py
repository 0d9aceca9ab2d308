"""A run folder's checkpoints (:class:`RunCheckpoints`): ``last.pt`` after every phase,
``best.pt`` and the model bundle at each new best score, and reading them back to resume.

The checkpoint format itself (what is stored, how it is read safely) is
:mod:`edgepanc.training.checkpoint`; this is which file gets what, and when.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from edgepanc.errors import InputError
from edgepanc.training.checkpoint import restore_rng_states, rng_states, save_checkpoint
from edgepanc.training.config import TrainConfig
from edgepanc.training.distributed import DistContext
from edgepanc.training.outputs import write_run_bundle
from edgepanc.training.steps import StepRunner
from edgepanc.training.train_state import TrainState

log = logging.getLogger(__name__)

# What a checkpoint that does not fit this run raises while it is loaded.
MISFIT_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError)


class RunCheckpoints:
    """Saves and restores the model, optimiser, scheduler, scaler and :class:`TrainState` of one
    run; only rank 0 writes.

    Example::

        >>> checkpoints = RunCheckpoints(config, Path("work/a"), steps, DistContext(), plan, True)
        >>> checkpoints.save_last(TrainState())  # work/a/last.pt
        >>> state = checkpoints.restore(load_checkpoint(checkpoints.last_path, config.identity()))
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        steps: StepRunner,
        context: DistContext,
        plan: Any,
        classifier: bool,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.steps = steps
        self.context = context
        self.plan = plan
        self.classifier = classifier  # False: the bundle says its subtype head was never trained

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def payload(self, state: TrainState) -> dict[str, Any]:
        """Everything a resumed run needs, as :func:`save_checkpoint` stores it."""
        return {
            "config_identity": self.config.identity(),
            "config": self.config.to_dict(),
            "model": self.steps.model.state_dict(),
            "optimizer": self.steps.optimizer.state_dict(),
            "scheduler": self.steps.scheduler.state_dict(),
            "scaler": self.steps.scaler.state_dict(),
            "state": state.__dict__,
            "rng": rng_states(),
        }

    def save_last(self, state: TrainState) -> None:
        if self.context.is_main:
            save_checkpoint(self.last_path, self.payload(state))

    def save_best(self, state: TrainState) -> None:
        """``best.pt``, and the run folder made a model bundle of the same weights (kind
        "trained")."""
        if self.context.is_main:
            save_checkpoint(self.run_dir / "best.pt", self.payload(state))
            write_run_bundle(
                self.run_dir, self.steps.model, self.plan, state, self.config, self.classifier
            )

    def restore(self, checkpoint: dict[str, Any]) -> TrainState:
        """Continue from a checkpoint of the same experiment (read by ``load_checkpoint``): the
        state it holds, with the weights, optimiser, schedule and RNGs restored.

        A checkpoint whose parts do not fit this run (edited, or of another network) is refused
        with one line naming ``last.pt``.
        """
        try:
            self.steps.model.load_state_dict(checkpoint["model"])
            self.steps.optimizer.load_state_dict(checkpoint["optimizer"])
            self.steps.scheduler.load_state_dict(checkpoint["scheduler"])
            self.steps.scaler.load_state_dict(checkpoint["scaler"])
            state = TrainState(**checkpoint["state"])
            restore_rng_states(checkpoint["rng"])
            self.steps.set_total_epochs(state.total_epochs(self.config.epochs))
        except MISFIT_ERRORS as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            raise InputError(
                self.last_path,
                f"checkpoint does not fit this run ({type(exc).__name__}: {first_line})",
            ) from None
        log.info("resumed from %s after epoch %d", self.last_path, state.epoch)
        return state

    def start_from(self, weights: dict[str, torch.Tensor], source: Path) -> None:
        """Initialise the weights from a trained bundle's (``--init-from``, read from ``source``).

        Heads that only one side has (deep supervision switched on or off) are left as they are.
        """
        result = self.steps.model.load_state_dict(weights, strict=False)
        log.info(
            "initialised from %s (%d tensors; new: %s; unused: %s)",
            source,
            len(weights) - len(result.unexpected_keys),
            ", ".join(result.missing_keys) or "none",
            ", ".join(result.unexpected_keys) or "none",
        )


__all__ = ["RunCheckpoints"]
