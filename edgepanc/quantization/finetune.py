"""Fine-tuning a compressed network with the training stage's own loop.

Pruning and QAT both need a few epochs of training to recover accuracy. Rather than a second
copy of the loop, this builds a :class:`edgepanc.training.loop.Trainer` for the network's config (same
sampler, augmentation, losses, optimiser, schedule, thermal guard), loads the given weights into
its model and runs :meth:`Trainer.run_epoch`. The Trainer's run folder is a scratch folder;
nothing is checkpointed there that the bundle needs.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from edgepanc.networks import MultiTaskUNet
from edgepanc.quantization.stages.context import QuantizeContext
from edgepanc.thermal import ThermalGuard
from edgepanc.training.config import TrainConfig
from edgepanc.training.loop import Trainer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """How long and how gently to fine-tune; the rest follows the model's training config."""

    epochs: int
    steps_per_epoch: int = 20
    lr: float = 3e-4  # a tenth of the training rate: small steps from trained weights
    device: str = "auto"
    seed: int = 0


def training_config_for(
    training: dict[str, Any],
    data: Path,
    scratch: Path,
    patch_size: Sequence[int],
    settings: FinetuneSettings,
) -> TrainConfig:
    """The model's own TrainConfig (from the bundle's provenance) adjusted for fine-tuning."""
    base = dict(training) if training else {"data": str(data), "out": str(scratch)}
    base.setdefault("patch_size", list(patch_size))
    config = TrainConfig.from_dict(base)
    return dataclasses.replace(
        config,
        data=str(data),
        out=str(scratch),
        epochs=settings.epochs,
        steps_per_epoch=settings.steps_per_epoch,
        lr=settings.lr,
        warmup_epochs=0,
        resume=False,
        device=settings.device,
        seed=settings.seed,
        deep_supervision=False,
    )


def finetune(
    model: MultiTaskUNet,
    train_cases: Sequence[Any],
    plan: Any,
    train_config: Any,
    guard: Any,
    prepare: Callable[[torch.nn.Module], None] | None = None,
) -> MultiTaskUNet:
    """Train ``model`` in place for ``train_config.epochs`` epochs; return it (eval mode).

    ``prepare(trainer_model)`` runs after the weights are loaded and before the first step;
    QAT uses it to insert fake quantization (it must keep the parameters the optimiser holds).
    """
    if train_config.epochs == 0:
        return model.eval()
    with tempfile.TemporaryDirectory(prefix="edgepanc-finetune-") as scratch:
        trainer = Trainer(train_config, Path(scratch), train_cases, [], plan, model.config, guard)
        trainer.model.load_state_dict(model.state_dict())
        if prepare is not None:
            prepare(trainer.model)
        for epoch in range(train_config.epochs):
            losses = trainer.run_epoch(epoch)
            log.info(
                "fine-tune epoch %d/%d: loss %.4f (seg %.4f, cls %.4f)",
                epoch + 1,
                train_config.epochs,
                losses["loss"],
                losses["seg_loss"],
                losses["cls_loss"],
            )
        tuned = trainer.model.cpu().eval()
    return tuned


def finetune_in_run(
    ctx: QuantizeContext,
    model: MultiTaskUNet,
    epochs: int,
    prepare: Callable[[torch.nn.Module], None] | None = None,
) -> MultiTaskUNet:
    """:func:`finetune` on the run's calibration cases with ``--steps-per-epoch``, ``--lr``,
    ``--device`` and ``--seed``; the rest as the source bundle was trained."""
    config = ctx.config
    settings = FinetuneSettings(epochs, config.steps_per_epoch, config.lr, ctx.device, config.seed)
    train_config = training_config_for(
        ctx.training, config.data, ctx.staging, ctx.patch_size, settings
    )
    return finetune(
        model, ctx.data.calibration_cases, ctx.plan, train_config, ThermalGuard.discover(), prepare
    )
