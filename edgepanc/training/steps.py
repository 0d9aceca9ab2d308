"""One optimiser step, and one epoch of them: what :class:`~edgepanc.training.loop.Trainer`
runs between its validations, checkpoints and logs.

:class:`StepRunner` holds the network (channels-last in a single CPU process, wrapped by DDP
across processes), AdamW with the per-step schedule, the gradient scaler, the patch sampler and
the subtype head's teacher forcing. An epoch re-seeds every RNG from ``(seed, epoch, rank)``,
which is what lets a resumed run replay the uninterrupted run's batches bit for bit.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from edgepanc.training.augmentation import AugmentationConfig
from edgepanc.training.batches import epoch_batches
from edgepanc.training.config import TrainConfig
from edgepanc.training.dataset import PreparedCase
from edgepanc.training.distributed import DistContext, mean_across_ranks
from edgepanc.training.losses import LossWeights, multitask_loss
from edgepanc.training.sampling import PatchSampler, SamplingConfig
from edgepanc.training.schedule import (
    build_scheduler,
    teacher_forcing_share,
    warmup_cosine_factor,
)
from edgepanc.training.teacher import draw_lesion_jitter, jitter_lesion

if TYPE_CHECKING:
    from edgepanc.training.train_state import TrainState


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed for the global RNGs at the start of ``epoch`` on ``rank``."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StepRunner:
    """The network and everything that changes it step by step (see the module docstring).

    Example::

        >>> steps = StepRunner(config, PRESETS["tiny"], torch.device("cpu"), None, cases,
        ...                    DistContext())
        >>> losses = steps.run_epoch(0, TrainState(), pause=lambda: 0.0)  # loss, seg_loss, ...
    """

    def __init__(
        self,
        config: TrainConfig,
        network_config: Any,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        train_cases: Sequence[PreparedCase],
        context: DistContext,
        augmentation: AugmentationConfig | None = None,
    ) -> None:
        from edgepanc.networks import build_network

        self.config = config
        self.device = device
        self.amp_dtype = amp_dtype
        self.context = context
        seed_everything(config.seed)  # identical initial weights on every rank
        self.model = build_network(network_config).to(self.device)
        # Channels-last on CPU spares oneDNN a layout reorder per 3D convolution (a faster
        # step); not under DDP, where gloo aborted at exit with channels-last parameters.
        self.memory_format = (
            torch.channels_last_3d
            if self.device.type == "cpu" and not self.context.enabled
            else torch.contiguous_format
        )
        self.model = self.model.to(memory_format=self.memory_format)
        self.train_model: torch.nn.Module = self.model
        if self.context.enabled:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.total_epochs = config.epochs
        self.scheduler = build_scheduler(
            self.optimizer,
            config.warmup_epochs * config.steps_per_epoch,
            config.epochs * config.steps_per_epoch,
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.sampler = PatchSampler(
            train_cases,
            SamplingConfig(
                config.patch_size,
                config.lesion_fraction,
                config.pancreas_fraction,
                config.lesion_size_balance,
            ),
            augmentation
            or AugmentationConfig(
                zoom_out_probability=config.zoom_out_probability,
                elastic_probability=config.elastic_probability,
                low_resolution_probability=config.low_resolution_probability,
            ),
            seed=config.seed,
            rank=self.context.rank,
            keep_clean_image=config.head_statistics == "clean",
        )
        self.loss_weights = LossWeights(seg=config.seg_weight, cls=config.cls_weight)

    def set_total_epochs(self, epochs: int) -> None:
        """Schedule the learning rate and teacher forcing to end after ``epochs`` epochs (a time
        budget plans the count after the first epoch); the steps taken keep their values."""
        if epochs == self.total_epochs:
            return
        self.total_epochs = epochs
        warmup = self.config.warmup_epochs * self.config.steps_per_epoch
        total = epochs * self.config.steps_per_epoch
        self.scheduler.lr_lambdas = [
            lambda step: warmup_cosine_factor(step, warmup, total)
            for _ in self.optimizer.param_groups
        ]

    def train_step(
        self, batch: dict[str, np.ndarray], state: TrainState
    ) -> tuple[float, float, float]:
        """One optimiser step (counted in ``state.step``); returns (total, seg, cls) losses."""
        image = torch.from_numpy(batch["image"]).to(self.device, non_blocking=True)
        image = image.contiguous(memory_format=self.memory_format)
        label = torch.from_numpy(batch["label"]).to(self.device, non_blocking=True)
        subtype = torch.from_numpy(batch["subtype"]).to(self.device, non_blocking=True)
        clean = batch.get("clean_image")
        if clean is not None:
            clean = torch.from_numpy(clean).to(self.device, non_blocking=True)
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            seg_output, cls_logits = self.train_model(
                image, reference=self.reference(label, state.step), statistics_image=clean
            )
        total, seg, cls = multitask_loss(
            seg_output,
            cls_logits,
            label,
            subtype,
            self.loss_weights,
            self.config.lesion_dice,
            self.config.lesion_recall_weight,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        state.step += 1
        return float(total.detach()), float(seg.detach()), float(cls.detach())

    def reference(self, label: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Teacher forcing for the subtype head: (label, which samples use it), drawn from the
        sampler's generator so that a resumed run draws the same."""
        share = teacher_forcing_share(
            step,
            self.total_epochs * self.config.steps_per_epoch,
            self.config.teacher_forcing,
            self.config.teacher_forcing_end,
        )
        if share <= 0 or self.model.config.classifier_pooling != "lesion_attention":
            return None
        use = self.sampler.rng.random(label.shape[0]) < share
        if self.config.teacher_mask_jitter > 0:
            shifts, radii = draw_lesion_jitter(
                self.sampler.rng, label.shape[0], self.config.teacher_mask_jitter
            )
            label = jitter_lesion(label, shifts, radii)
        return label, torch.from_numpy(use).to(label.device)

    def run_epoch(
        self, epoch: int, state: TrainState, pause: Callable[[], float]
    ) -> dict[str, float]:
        """Train one epoch; the epoch's mean losses and the seconds ``pause`` waited (it is
        called before every step and waits while too hot)."""
        seed = epoch_seed(self.config.seed, epoch, self.context.rank)
        seed_everything(seed)
        self.sampler.start_epoch(epoch)
        self.train_model.train()
        sums = np.zeros(3)
        pause_s = 0.0
        batches = epoch_batches(
            self.sampler,
            epoch,
            self.config.steps_per_epoch,
            self.config.batch_size,
            self.config.workers,
        )
        bar = tqdm(
            batches,
            total=self.config.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.total_epochs}",
            unit="step",
            leave=False,
            disable=not self.context.is_main,
        )
        for done, batch in enumerate(bar, start=1):
            pause_s += pause()
            sums += self.train_step(batch, state)
            bar.set_postfix(loss=f"{sums[0] / done:.3f}")
        means = mean_across_ranks((sums / self.config.steps_per_epoch).tolist(), self.context)
        return {"loss": means[0], "seg_loss": means[1], "cls_loss": means[2], "pause_s": pause_s}
