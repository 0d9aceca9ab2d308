"""What a run leaves besides checkpoints and metrics: the model bundle and ``summary.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from edgepanc.io.atomic import write_json_atomic
from edgepanc.training.config import TrainConfig

log = logging.getLogger(__name__)

LABELS = {"0": "background", "1": "pancreas", "2": "lesion"}
SUBTYPES = {"0": "subtype0", "1": "subtype1", "2": "subtype2"}


def write_run_bundle(
    run_dir: Path,
    model: torch.nn.Module,
    plan: Any,
    state: Any,
    config: TrainConfig,
    classifier: bool = True,
) -> None:
    """Make ``run_dir`` a model bundle: ``model``'s weights + model.json (kind "trained");
    ``classifier`` False records a subtype head that was never trained (no subtype labels).

    Example::

        >>> write_run_bundle(Path("work/a"), model, plan, trainer.state, config)
    """
    from edgepanc.bundle import write_bundle
    from edgepanc.synth.marker import dataset_provenance

    write_bundle(
        run_dir,
        model,
        plan.to_dict(),
        metrics={"validation": state.best_metrics, "best_epoch": state.best_epoch},
        labels=LABELS,
        subtypes=SUBTYPES,
        kind="trained",
        classifier=classifier,
        # what the model was trained on (synthetic or not), which run checks scans against
        extra_provenance={"training": config.to_dict(), "data": dataset_provenance(config.data)},
    )


def write_run_summary(
    run_dir: Path,
    state: Any,
    guard: Any,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    timing: dict[str, Any] | None = None,
    chose: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``summary.json`` (epochs, steps, best score, thermal pauses, ``timing``: the
    time budget, the epochs it planned and the seconds the run took, and ``chose``: which cases
    chose the model and which scored it, :func:`~edgepanc.training.selection.who_chose`) and log
    its line.

    Example::

        >>> summary = write_run_summary(Path("work/a"), state, guard, torch.device("cpu"), None)
    """
    summary = {
        "epochs": state.epoch,
        "steps": state.step,
        "best_epoch": state.best_epoch,
        "best_score": state.best_score,
        "best_metrics": state.best_metrics,
        "thermal": guard.summary(),
        "device": str(device),
        "autocast": None if amp_dtype is None else str(amp_dtype),
        "time": timing or {},
        "selection": chose or {},
    }
    write_json_atomic(run_dir / "summary.json", summary)
    thermal = summary["thermal"]
    if chose:
        log.info("the model was chosen on %s; scored on %s", chose["chosen_on"], chose["scored_on"])
    log.info(
        "done: %d epochs, best score %.4f at epoch %d; %d thermal pauses, %.0f s paused",
        state.epoch,
        state.best_score,
        state.best_epoch,
        thermal["pauses"],
        thermal["total_pause_s"],
    )
    return summary
