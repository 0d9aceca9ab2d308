"""Multi-task loss: soft Dice + cross-entropy for segmentation, cross-entropy for the subtype.

Dice is batch Dice (nnU-Net's ``batch_dice``): sums run over the whole batch, so a patch without
lesion does not produce a degenerate 0/0 term. It covers three regions: pancreas (label 1),
lesion (label 2) and the whole pancreas (labels 1 and 2), the last because whole-pancreas DSC is
one of the targets and region-based supervision is what optimises it directly.

``lesion_dice="sample"`` takes the lesion's Dice per patch instead, averaged over the patches
that hold lesion: in batch Dice a 5 mm lesion (tens of voxels) beside a 40 mm one (thousands)
hardly counts, and the small lesions are the ones the segmentation misses and the subtype is
then lost with them. Patches without lesion still learn its absence from the cross-entropy.

``lesion_recall_weight`` makes the lesion term a Tversky index (Salehi et al., 2017): missed
lesion voxels weigh ``beta`` and false ones ``1 - beta``, so ``beta > 0.5`` trades precision for
recall. 0.5 is the Dice term exactly. No recipe sets it: on the phantoms 0.7 added false-positive
lesions and not the subtype-2 rims it was tried for (docs/measurements/tversky_and_rims.md).

The subtype is a case-level label about the lesion, so its cross-entropy is averaged only over
patches that contain lesion voxels: a patch of plain pancreas carries no subtype evidence, and
asking the head to name one would teach it to guess the prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgepanc.training.config import LESION_DICE_MODES

LESION_LABEL = 2


@dataclass(frozen=True)
class LossWeights:
    seg: float = 1.0
    cls: float = 0.5


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 1e-5,
    lesion_dice: str = "batch",
    lesion_recall_weight: float = 0.5,
) -> torch.Tensor:
    """1 - mean Dice over pancreas, lesion and the whole pancreas (module docstring).

    ``logits`` [B, 3, D, H, W], ``target`` [B, D, H, W] integer labels.

    Example:
        >>> logits = torch.zeros(1, 3, 2, 4, 4)
        >>> target = torch.zeros(1, 2, 4, 4, dtype=torch.long)
        >>> target[0, :, 1:3, 1:3] = 2
        >>> loss = soft_dice_loss(logits, target, lesion_recall_weight=0.7)
        >>> bool(0 < loss < 1)
        True
    """
    if lesion_dice not in LESION_DICE_MODES:
        raise ValueError(f"lesion_dice must be one of {LESION_DICE_MODES}, got {lesion_dice!r}")
    if not 0.0 < lesion_recall_weight < 1.0:
        raise ValueError(f"lesion_recall_weight must be in (0, 1), got {lesion_recall_weight}")
    probs = torch.softmax(logits.float(), dim=1)
    pred_regions = torch.stack([probs[:, 1], probs[:, 2], probs[:, 1] + probs[:, 2]], dim=1)
    ref_regions = torch.stack([target == 1, target == 2, target > 0], dim=1).to(probs.dtype)
    # Sums per sample and region [B, 3]; batch Dice adds them over the batch.
    intersection = (pred_regions * ref_regions).sum((2, 3, 4))
    predicted, reference = pred_regions.sum((2, 3, 4)), ref_regions.sum((2, 3, 4))
    denominator = predicted + reference
    if lesion_recall_weight != 0.5:
        # Tversky in Dice form: 2TP / (2TP + 2(1-b)FP + 2bFN) = 2TP / (2(1-b)P + 2bR).
        beta = lesion_recall_weight
        lesion = 2 * (1 - beta) * predicted[:, 1] + 2 * beta * reference[:, 1]
        denominator = torch.stack((denominator[:, 0], lesion, denominator[:, 2]), dim=1)
    dice = (2 * intersection.sum(0) + smooth) / (denominator.sum(0) + smooth)
    if lesion_dice == "sample":
        # Only here: the host sync of .any() would otherwise cost every batch-Dice step on a GPU.
        has_lesion = ref_regions[:, 1].flatten(1).any(dim=1)
        if bool(has_lesion.any()):
            per_sample = (2 * intersection[has_lesion, 1] + smooth) / (
                denominator[has_lesion, 1] + smooth
            )
            dice = torch.stack((dice[0], per_sample.mean(), dice[2]))
    return 1.0 - dice.mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    lesion_dice: str = "batch",
    lesion_recall_weight: float = 0.5,
) -> torch.Tensor:
    """Soft Dice + cross-entropy at one resolution."""
    dice = soft_dice_loss(
        logits, target, lesion_dice=lesion_dice, lesion_recall_weight=lesion_recall_weight
    )
    return dice + F.cross_entropy(logits.float(), target.long())


def deep_supervision_loss(
    outputs: list[torch.Tensor],
    target: torch.Tensor,
    lesion_dice: str = "batch",
    lesion_recall_weight: float = 0.5,
) -> torch.Tensor:
    """Weighted sum over resolutions (weights halve per level, normalised), as nnU-Net does.

    Targets for lower resolutions are nearest-neighbour downsampled labels.
    """
    weights = torch.tensor([0.5**i for i in range(len(outputs))])
    weights = weights / weights.sum()
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for weight, logits in zip(weights, outputs, strict=True):
        level_target = target
        if logits.shape[2:] != target.shape[1:]:
            level_target = F.interpolate(
                target[:, None].float(), size=logits.shape[2:], mode="nearest"
            )[:, 0].long()
        level_loss = segmentation_loss(logits, level_target, lesion_dice, lesion_recall_weight)
        total = total + weight * level_loss
    return total


def subtype_loss(
    cls_logits: torch.Tensor, subtype: torch.Tensor, has_lesion: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy over the patches with lesion voxels; zero (kept in the graph) if none."""
    mask = has_lesion.bool() & (subtype >= 0)
    if not bool(mask.any()):
        return cls_logits.float().sum() * 0.0
    return F.cross_entropy(cls_logits[mask].float(), subtype[mask].long())


def multitask_loss(
    seg_output: torch.Tensor | list[torch.Tensor],
    cls_logits: torch.Tensor,
    target: torch.Tensor,
    subtype: torch.Tensor,
    weights: LossWeights,
    lesion_dice: str = "batch",
    lesion_recall_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(total, seg, cls)``; ``total = weights.seg * seg + weights.cls * cls``."""
    if isinstance(seg_output, list | tuple):
        seg = deep_supervision_loss(list(seg_output), target, lesion_dice, lesion_recall_weight)
    else:
        seg = segmentation_loss(seg_output, target, lesion_dice, lesion_recall_weight)
    has_lesion = (target == LESION_LABEL).flatten(1).any(dim=1)
    cls = subtype_loss(cls_logits, subtype, has_lesion)
    return weights.seg * seg + weights.cls * cls, seg, cls
