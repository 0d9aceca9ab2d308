"""The training loop: :class:`Trainer` runs epochs, validates, checkpoints and logs.

Precision: fp16 autocast with ``torch.amp.GradScaler("cuda")`` on CUDA; on CPU, fp32 by default.
``--amp`` on CPU switches on bf16 autocast, which halves the step on a CPU with native bf16 and is
an order of magnitude slower on one without, hence fp32 as the CPU default (timings in
docs/measurements/cpu_recipe.md). Optimiser: AdamW with linear warm-up then cosine decay per step,
gradient norm clipped at ``config.grad_clip``. The best checkpoint is chosen by
:func:`edgepanc.metrics.combined_score` of the validation metrics; ``patience`` validations
without improvement stop the run early.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edgepanc.backends import devices
from edgepanc.errors import InputError
from edgepanc.thermal import ThermalGuard, ThermalTimeout
from edgepanc.training.augmentation import AugmentationConfig
from edgepanc.training.batches import epoch_batches
from edgepanc.training.checkpoint import restore_rng_states, rng_states, save_checkpoint
from edgepanc.training.config import TrainConfig
from edgepanc.training.dataset import PreparedCase
from edgepanc.training.distributed import (
    DistContext,
    barrier,
    gather_lists,
    mean_across_ranks,
    shard,
)
from edgepanc.training.logs import epoch_line, plot_curves, refit_line, write_metrics
from edgepanc.training.losses import LossWeights, multitask_loss
from edgepanc.training.outputs import write_run_bundle, write_run_summary
from edgepanc.training.sampling import PatchSampler, SamplingConfig
from edgepanc.training.schedule import build_scheduler, teacher_forcing_share
from edgepanc.training.teacher import draw_lesion_jitter, jitter_lesion
from edgepanc.training.validation import summarize_results, validate_cases

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop carries between epochs (saved in every checkpoint)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps taken
    best_score: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict[str, Any] = field(default_factory=dict)
    stale_validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    head_refitted: bool = False  # --head-refit has run (after the last epoch)


def resolve_device(requested: str, context: DistContext) -> torch.device:
    """``auto``: CUDA when available; under DDP on CUDA, this process's local GPU."""
    requested = devices.resolve_device(requested)
    if requested == "cuda":
        if not devices.cuda_available():
            raise InputError("--device", "cuda asked for, but torch sees no CUDA device")
        torch.cuda.set_device(context.local_rank)
        return torch.device("cuda", context.local_rank)
    return torch.device("cpu")


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype, or None for fp32 (see the module docstring for the defaults)."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed for the global RNGs at the start of ``epoch`` on ``rank``."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Trains one model on prepared cases and writes the run folder (rank 0 only).

    ``guard`` is injectable so tests can script temperatures; ``augmentation`` too.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        train_cases: Sequence[PreparedCase],
        val_cases: Sequence[PreparedCase],
        plan: Any,
        network_config: Any,
        guard: ThermalGuard,
        context: DistContext | None = None,
        augmentation: AugmentationConfig | None = None,
    ) -> None:
        from edgepanc.networks import build_network

        self.config = config
        self.run_dir = Path(run_dir)
        self.context = context or DistContext()
        self.device = resolve_device(config.device, self.context)
        if config.threads is not None:
            # One thread per process avoids OpenMP oversubscription on a small or shared CPU.
            torch.set_num_threads(config.threads)
        self.amp_dtype = autocast_dtype(self.device, config.amp)
        self.plan = plan
        self.network_config = network_config
        self.guard = guard
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)
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
        total_steps = config.epochs * config.steps_per_epoch
        self.scheduler = build_scheduler(
            self.optimizer, config.warmup_epochs * config.steps_per_epoch, total_steps
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.sampler = PatchSampler(
            train_cases,
            SamplingConfig(config.patch_size, config.lesion_fraction, config.pancreas_fraction),
            augmentation or AugmentationConfig(zoom_out_probability=config.zoom_out_probability),
            seed=config.seed,
            rank=self.context.rank,
            keep_clean_image=config.head_statistics == "clean",
        )
        self.loss_weights = LossWeights(seg=config.seg_weight, cls=config.cls_weight)
        self.state = TrainState()

    # -- checkpoints -------------------------------------------------------------------------

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "config_identity": self.config.identity(),
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": self.state.__dict__,
            "rng": rng_states(),
        }

    def save_last(self) -> None:
        if self.context.is_main:
            save_checkpoint(self.last_path, self.checkpoint_state())

    def start_from(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Initialise the weights from a trained bundle's (``--init-from``, read from ``source``).

        Heads that only one side has (deep supervision switched on or off) are left as they are.
        """
        result = self.model.load_state_dict(state, strict=False)
        log.info(
            "initialised from %s (%d tensors; new: %s; unused: %s)",
            source,
            len(state) - len(result.unexpected_keys),
            ", ".join(result.missing_keys) or "none",
            ", ".join(result.unexpected_keys) or "none",
        )

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint of the same experiment (read by ``load_checkpoint``).

        A checkpoint whose parts do not fit this run (edited, or of another network) is refused
        with one line naming ``last.pt``.
        """
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.scaler.load_state_dict(checkpoint["scaler"])
            self.state = TrainState(**checkpoint["state"])
            restore_rng_states(checkpoint["rng"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            raise InputError(
                self.last_path,
                f"checkpoint does not fit this run ({type(exc).__name__}: {first_line})",
            ) from None
        log.info("resumed from %s after epoch %d", self.last_path, self.state.epoch)

    # -- one step, one epoch -----------------------------------------------------------------

    def train_step(self, batch: dict[str, np.ndarray]) -> tuple[float, float, float]:
        """One optimiser step; returns (total, seg, cls) losses."""
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
                image, reference=self.reference(label), statistics_image=clean
            )
        total, seg, cls = multitask_loss(
            seg_output, cls_logits, label, subtype, self.loss_weights, self.config.lesion_dice
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        return float(total.detach()), float(seg.detach()), float(cls.detach())

    def reference(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Teacher forcing for the subtype head: (label, which samples use it), drawn from the
        sampler's generator so that a resumed run draws the same."""
        share = teacher_forcing_share(
            self.state.step,
            self.config.epochs * self.config.steps_per_epoch,
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

    def thermal_pause(self) -> float:
        """Wait while too hot; the pause length in seconds (ThermalTimeout propagates)."""
        event = self.guard.wait_until_cool()
        return 0.0 if event is None else float(event.duration_s)

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; returns the epoch's mean losses and pause seconds."""
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
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="step",
            leave=False,
            disable=not self.context.is_main,
        )
        for done, batch in enumerate(bar, start=1):
            pause_s += self.thermal_pause()
            sums += self.train_step(batch)
            bar.set_postfix(loss=f"{sums[0] / done:.3f}")
        means = mean_across_ranks((sums / self.config.steps_per_epoch).tolist(), self.context)
        return {"loss": means[0], "seg_loss": means[1], "cls_loss": means[2], "pause_s": pause_s}

    def validate(self) -> dict[str, Any]:
        """Every rank validates its share; all ranks get the same summary."""
        local = validate_cases(
            self.model,
            shard(self.val_cases, self.context),
            self.config.patch_size,
            self.device.type,
            self.config.val_step_fraction,
        )
        return summarize_results(gather_lists(local, self.context))

    # -- the run -----------------------------------------------------------------------------

    def fit(self, checkpoint: dict[str, Any] | None = None) -> TrainState:
        """Train to ``config.epochs`` (or early stop), after ``checkpoint`` if resuming."""
        if checkpoint is not None:
            self.load(checkpoint)
        elif self.state.epoch == 0:
            # A checkpoint before the first step, so even a thermal timeout in epoch 1 leaves one.
            self.save_last()
        try:
            trained = False
            while self.state.epoch < self.config.epochs and not self.should_stop():
                self.one_epoch()
                trained = True
            # Refit once per final model: again when a resumed run trained further epochs.
            if self.config.head_refit and (trained or not self.state.head_refitted):
                self.run_head_refit()
        except ThermalTimeout as exc:
            raise ThermalTimeout(
                f"{exc}; training stopped, {self.last_path} holds epoch {self.state.epoch}: "
                "continue with --resume",
                exc.event,
            ) from exc
        if self.context.is_main:
            self.write_summary()
        return self.state

    def should_stop(self) -> bool:
        patience = self.config.patience
        if patience and self.state.stale_validations >= patience:
            log.info(
                "early stop: no better validation score for %d validations (best %.4f at epoch %d)",
                self.state.stale_validations,
                self.state.best_score,
                self.state.best_epoch,
            )
            return True
        return False

    def one_epoch(self) -> None:
        epoch = self.state.epoch
        start = time.monotonic()
        record: dict[str, Any] = {"epoch": epoch + 1, **self.run_epoch(epoch)}
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["train_s"] = time.monotonic() - start
        due = (epoch + 1) % self.config.val_every == 0 or epoch + 1 == self.config.epochs
        self.score(record, validate=due, latest=float(epoch))
        record["seconds"] = time.monotonic() - start
        self.state.epoch = epoch + 1
        self.close_phase(record, epoch_line(record, self.config.epochs))

    def run_head_refit(self) -> None:
        """``--head-refit``: refit the subtype head on the training cases' runtime tiles
        (:func:`edgepanc.training.head_refit.refit_phase`), validate, and log it as a row of its
        own (``"phase": "head_refit"``, the epoch of the weights it refitted). The best checkpoint
        and bundle follow the combined score as after any validation."""
        from edgepanc.training.head_refit import refit_phase

        start = time.monotonic()
        record: dict[str, Any] = {"epoch": self.state.epoch, "phase": "head_refit"}
        record.update(
            refit_phase(
                self.model,
                self.train_cases,
                self.config,
                self.device,
                self.context,
                self.thermal_pause,
            )
        )
        record["train_s"] = time.monotonic() - start
        self.score(record, validate=True, latest=float(self.state.epoch))
        record["seconds"] = time.monotonic() - start
        self.state.head_refitted = True
        self.close_phase(record, refit_line(record))

    def score(self, record: dict[str, Any], validate: bool, latest: float) -> None:
        """Validate into ``record`` when ``validate`` and keep the best model; without
        validation cases every phase's model is the best (scored ``latest``)."""
        if self.val_cases and validate:
            val_start = time.monotonic()
            record.update(self.validate())
            record["val_s"] = time.monotonic() - val_start
            self.update_best(record)
        elif not self.val_cases:
            self.update_best(record | {"combined_score": latest})

    def close_phase(self, record: dict[str, Any], line: str) -> None:
        """Add the phase's row to the history; log it, checkpoint and write the metrics (rank 0)."""
        self.state.history.append(record)
        if self.context.is_main:
            log.info(line)
            self.save_last()
            write_metrics(self.run_dir, self.state.history)
            plot_curves(self.state.history, self.run_dir / "curves.png")
        barrier(self.context)

    def update_best(self, record: dict[str, Any]) -> None:
        score = float(record["combined_score"])
        if score > self.state.best_score:
            self.state.best_score = score
            self.state.best_epoch = record["epoch"]
            self.state.best_metrics = {k: v for k, v in record.items() if k != "pause_s"}
            self.state.stale_validations = 0
            if self.context.is_main:
                save_checkpoint(self.run_dir / "best.pt", self.checkpoint_state())
                self.write_bundle()
        else:
            self.state.stale_validations += 1

    # -- the bundle and the summary ---------------------------------------------------------

    def write_bundle(self) -> None:
        """Make the run folder a model bundle: best weights + model.json (kind "trained")."""
        write_run_bundle(self.run_dir, self.model, self.plan, self.state, self.config)

    def write_summary(self) -> None:
        write_run_summary(self.run_dir, self.state, self.guard, self.device, self.amp_dtype)
