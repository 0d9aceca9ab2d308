"""Schedules over optimiser steps: the learning rate (linear warm-up, then cosine decay to a
small floor) and the subtype head's teacher-forcing share."""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, floor: float = 0.01
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def teacher_forcing_share(step: int, total_steps: int, start: float, end: float | None) -> float:
    """Share of patches pooled under the reference mask at ``step``: ``start`` throughout when
    ``end`` is None, else linear from ``start`` at step 0 to ``end`` at the last step (and
    ``end`` beyond it)."""
    if end is None:
        return start
    progress = min(step / max(total_steps - 1, 1), 1.0)
    return start + (end - start) * progress


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler; its state is saved in every checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps)
    )
