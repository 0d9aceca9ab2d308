"""Refit the subtype head on the features the runtime's tiles give it (``--head-refit``).

In training the head sees lesion-centred patches, under the reference mask for a share of them;
``edgepanc run`` shows it tiles of the runtime's sliding-window grid, under the segmentation's
own mask, often with the lesion cut by the tile edge, and averages the tile logits weighted by
the lesion each tile holds (:func:`~edgepanc.inferers.sliding_window.classify_from_tiles`).
Through that path a head trained on patches alone misnames a quarter of its own training cases
(docs/measurements/cpu_recipe.md), so the head does not learn what the runtime asks of it.

After the last epoch the network is frozen and run once over the training cases' runtime tiles
that hold lesion (:func:`lesion_tiles`); the pooled features fc1 reads are kept
(:meth:`~edgepanc.networks.unet.MultiTaskUNet.head_inputs`), and the head alone (fc1, norm,
fc2) is trained on them, full batch, with the runtime's aggregation: per case the tile logits
weighted by each tile's predicted lesion mass, class-balanced cross-entropy on the result.
Gaussian noise on the features (a share of each feature's spread) and weight decay stand in for
the variety a few dozen lesions lack. The refit raises macro F1 for heads trained with clean
statistics and teacher forcing ending at 0, and lowers it for the fp32 recipe with augmented
statistics and constant teacher forcing (docs/measurements/cpu_recipe.md, the head refit table).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgepanc.inferers.sliding_window import (
    frame_volume,
    importance_map,
    plan_sliding_window,
)
from edgepanc.inferers.tiling import tile_window
from edgepanc.networks.config import LESION_LABEL
from edgepanc.networks.unet import class_probabilities
from edgepanc.training.config import TrainConfig
from edgepanc.training.dataset import PreparedCase
from edgepanc.training.distributed import DistContext, broadcast_module


@dataclass(frozen=True)
class HeadRefitConfig:
    """How the head is refitted (values chosen on measured features, docs/measurements/cpu_recipe.md).

    Example::

        >>> HeadRefitConfig(seed=3).steps
        1000
    """

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.1
    feature_noise: float = 0.3  # noise std as a share of each feature's std over the tiles
    max_tiles_per_case: int = 8  # the tiles holding the most reference lesion
    min_tile_share: float = 0.05  # of the case's largest tile lesion mass; fewer are noise
    tile_batch: int = 2
    seed: int = 0


@dataclass
class TileFeatures:
    """Pooled head inputs of the selected tiles of every case.

    ``pooled`` [T, F]; ``weights`` [T], each case's summing to 1 (its tiles' predicted lesion
    mass, as the runtime weighs them); ``case_index`` [T] into ``subtypes`` [C].
    """

    pooled: torch.Tensor
    weights: torch.Tensor
    case_index: torch.Tensor
    subtypes: torch.Tensor

    @property
    def num_cases(self) -> int:
        return int(self.subtypes.shape[0])


def lesion_tiles(
    label: np.ndarray,
    patch_size: Sequence[int],
    step_fraction: float,
    importance: np.ndarray,
    config: HeadRefitConfig,
) -> list[tuple[int, int, int]]:
    """Corners (in the plan's padded frame) of the runtime tiles of ``label``'s volume that hold
    the most reference lesion, importance-weighted: at most ``max_tiles_per_case``, none below
    ``min_tile_share`` of the largest."""
    plan = plan_sliding_window(label.shape, patch_size, step_fraction)
    framed, _ = frame_volume((label == LESION_LABEL).astype(np.float32), plan)
    masses = np.array(
        [
            float(np.tensordot(framed[tile_window(corner, plan.patch_size)], importance, axes=3))
            for corner in plan.tiles
        ]
    )
    if masses.max(initial=0.0) <= 0:
        return []
    order = np.argsort(-masses, kind="stable")[: config.max_tiles_per_case]
    keep = [i for i in order if masses[i] >= config.min_tile_share * masses[order[0]]]
    return [plan.tiles[i] for i in keep]


def count_refit_tiles(cases: Sequence[PreparedCase], config: TrainConfig) -> int:
    """How many tiles the refit will read: :func:`lesion_tiles` of each case with a subtype, from
    its reference labels alone (cheap, so a time budget can keep their time back).

    Example: ``count_refit_tiles(train_cases, config)`` -> ``310`` for 88 quiz phantoms.
    """
    refit_config = HeadRefitConfig(seed=config.seed)
    patch = tuple(int(p) for p in config.patch_size)
    importance = importance_map(patch, "gaussian")
    return sum(
        len(lesion_tiles(c.label, patch, config.val_step_fraction, importance, refit_config))
        for c in cases
        if c.subtype is not None and c.subtype >= 0
    )


def collect_tile_features(
    model: torch.nn.Module,
    cases: Sequence[PreparedCase],
    patch_size: Sequence[int],
    device: torch.device,
    step_fraction: float = 0.5,
    config: HeadRefitConfig | None = None,
    between_cases: Callable[[], object] | None = None,
) -> TileFeatures:
    """Run the frozen ``model`` (eval mode, fp32) over the lesion tiles of the cases that have a
    subtype and a lesion; see :class:`TileFeatures`."""
    config = config or HeadRefitConfig()
    importance = importance_map(tuple(int(p) for p in patch_size), "gaussian")
    weight_map = torch.tensor(importance, device=device)  # importance is read-only
    pooled, weights, case_index, subtypes = [], [], [], []
    was_training = model.training
    model.eval()
    try:
        for case in cases:
            if case.subtype is None or case.subtype < 0:
                continue
            corners = lesion_tiles(case.label, patch_size, step_fraction, importance, config)
            if not corners:
                continue
            plan = plan_sliding_window(case.image.shape, patch_size, step_fraction)
            framed, _ = frame_volume(case.image, plan)
            tiles = np.stack([framed[tile_window(c, plan.patch_size)] for c in corners])
            case_pooled, masses = [], []
            for start in range(0, len(tiles), config.tile_batch):
                batch = torch.from_numpy(tiles[start : start + config.tile_batch, None])
                with torch.inference_mode():
                    seg_logits, features = model.head_inputs(batch.to(device))
                    lesion = class_probabilities(seg_logits.float())[:, LESION_LABEL]
                    masses.append((lesion * weight_map).sum(dim=(1, 2, 3)).cpu())
                case_pooled.append(features.float().cpu())
            mass = torch.cat(masses).double()
            # No lesion predicted in any tile: the runtime then weighs tiles equally.
            share = mass / mass.sum() if mass.sum() > 0 else torch.full_like(mass, 1 / len(mass))
            pooled.append(torch.cat(case_pooled))
            weights.append(share.float())
            case_index.append(torch.full((len(corners),), len(subtypes), dtype=torch.long))
            subtypes.append(int(case.subtype))
            if between_cases is not None:
                between_cases()
    finally:
        model.train(was_training)
    if not subtypes:
        raise ValueError("no training case has both a subtype and a lesion to refit the head on")
    return TileFeatures(
        pooled=torch.cat(pooled),
        weights=torch.cat(weights),
        case_index=torch.cat(case_index),
        subtypes=torch.tensor(subtypes, dtype=torch.long),
    )


def case_logits(
    head: torch.nn.Module, features: TileFeatures, pooled: torch.Tensor
) -> torch.Tensor:
    """Per case, the tile logits of ``head.classify(pooled)`` weighted as the runtime weighs
    them -> [C, S]."""
    tile_logits = head.classify(pooled)
    out = tile_logits.new_zeros((features.num_cases, tile_logits.shape[1]))
    return out.index_add(0, features.case_index, tile_logits * features.weights[:, None])


def refit_head(
    head: torch.nn.Module, features: TileFeatures, config: HeadRefitConfig | None = None
) -> dict[str, float]:
    """Train ``head`` (a :class:`~edgepanc.networks.unet.ClassificationHead`) in place on
    ``features``; returns the loss before and after and the accuracy on them after.

    Runs on the CPU (a few thousand small matrix products) and moves the head back."""
    config = config or HeadRefitConfig()
    device = next(head.parameters()).device
    was_training = head.training
    head.to("cpu")
    generator = torch.Generator().manual_seed(config.seed)
    counts = torch.bincount(features.subtypes, minlength=int(features.subtypes.max()) + 1)
    class_weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1).float(), 0.0)
    class_weight = class_weight * (counts > 0).sum() / class_weight.sum()
    spread = features.pooled.std(dim=0, keepdim=True)

    def loss_of(pooled: torch.Tensor) -> torch.Tensor:
        logits = case_logits(head, features, pooled)
        return F.cross_entropy(logits, features.subtypes, weight=class_weight)

    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    try:
        head.eval()
        with torch.no_grad():
            before = float(loss_of(features.pooled))
        head.train()
        # Dropout draws from the global generator: seeded here, and restored afterwards so
        # that the refit leaves the run's random streams as they were.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            for _ in range(config.steps):
                noise = torch.randn(features.pooled.shape, generator=generator)
                loss = loss_of(features.pooled + config.feature_noise * spread * noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        head.eval()
        with torch.no_grad():
            logits = case_logits(head, features, features.pooled)
            after = float(F.cross_entropy(logits, features.subtypes, weight=class_weight))
            accuracy = float((logits.argmax(dim=1) == features.subtypes).float().mean())
    finally:
        head.train(was_training)
        head.to(device)
    return {"loss_before": before, "loss_after": after, "train_accuracy": accuracy}


__all__ = [
    "HeadRefitConfig",
    "TileFeatures",
    "case_logits",
    "collect_tile_features",
    "lesion_tiles",
    "refit_head",
]


def refit_phase(
    model: torch.nn.Module,
    cases: Sequence[PreparedCase],
    config: TrainConfig,
    device: torch.device,
    context: DistContext,
    pause: Callable[[], float],
) -> dict[str, Any]:
    """Refit ``model``'s subtype head on ``cases``' runtime tiles; the phase's metric fields.

    ``pause`` waits between cases while too hot and returns the seconds it waited. Every rank
    ends with rank 0's head, to the last bit.

    Example::

        >>> fields = refit_phase(model, cases, config, torch.device("cpu"), DistContext(), float)
    """
    refit_config = HeadRefitConfig(seed=config.seed)
    pause_s = 0.0

    def cool_down() -> None:
        nonlocal pause_s
        pause_s += pause()

    features = collect_tile_features(
        model,
        cases,
        config.patch_size,
        device,
        config.val_step_fraction,
        refit_config,
        between_cases=cool_down,
    )
    fit = refit_head(model.cls_head, features, refit_config)
    broadcast_module(model.cls_head, context)
    return {
        "refit_cases": features.num_cases,
        "refit_tiles": int(features.pooled.shape[0]),
        "refit_loss_before": fit["loss_before"],
        "refit_loss_after": fit["loss_after"],
        "refit_train_accuracy": fit["train_accuracy"],
        "pause_s": pause_s,
    }
