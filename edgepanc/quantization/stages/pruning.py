"""Pruning: the network with ``--prune`` of its channels removed, fine-tuned, as fp32 weights.

The pruned network is an ordinary, smaller MultiTaskUNet (:mod:`edgepanc.quantization.pruning`);
the pipeline then exports and quantizes it like the full one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from edgepanc.bundle import save_weights
from edgepanc.networks import MultiTaskUNet
from edgepanc.quantization.finetune import finetune_in_run
from edgepanc.quantization.pruning import accumulate_taylor_scores, prune_network
from edgepanc.quantization.stages.context import PreparedData, QuantizeContext
from edgepanc.quantization.stages.measure import measure
from edgepanc.quantization.variants import torch_weights
from edgepanc.training.losses import LossWeights, multitask_loss

# Calibration patches per batch when Taylor scores are accumulated.
TAYLOR_BATCH = 2


def prune(ctx: QuantizeContext, model: MultiTaskUNet, ratio: float) -> MultiTaskUNet:
    """Remove ``ratio`` of ``model``'s channels per stage, fine-tune, stage and measure the
    weights; return the small network."""
    config = ctx.config
    scores = None
    if config.prune_criterion == "taylor":
        scores = accumulate_taylor_scores(model, taylor_batches(ctx.data), training_loss(ctx))
    small = prune_network(model, ratio, config.prune_criterion, scores)
    small = finetune_in_run(ctx, small, config.finetune_epochs)
    variant = torch_weights(pruned=True)
    save_weights(small, ctx.path(variant))
    notes = (
        f"{ratio:.2f} of channels pruned by {config.prune_criterion}, "
        f"{config.finetune_epochs} fine-tuning epochs; features {list(small.config.features)}"
    )
    measure(ctx, variant, small, notes)
    return small


def taylor_batches(data: PreparedData) -> list[tuple[torch.Tensor, ...]]:
    """The calibration patches, their labels and subtypes, in batches of ``TAYLOR_BATCH``."""
    batches = []
    for start in range(0, len(data.patches), TAYLOR_BATCH):
        part = slice(start, start + TAYLOR_BATCH)
        batches.append(
            (
                torch.from_numpy(data.patches[part]),
                torch.from_numpy(data.labels[part]),
                torch.from_numpy(data.subtypes[part]),
            )
        )
    return batches


def training_loss(ctx: QuantizeContext) -> Callable[..., torch.Tensor]:
    """The loss the model was trained with: Taylor importance is its first-order change."""
    lesion_dice = ctx.training.get("lesion_dice", "batch")
    recall_weight = ctx.training.get("lesion_recall_weight", 0.5)

    def loss(
        outputs: tuple[torch.Tensor, torch.Tensor], label: torch.Tensor, subtype: torch.Tensor
    ) -> torch.Tensor:
        weights = LossWeights()
        return multitask_loss(
            outputs[0], outputs[1], label, subtype, weights, lesion_dice, recall_weight
        )[0]

    return loss
