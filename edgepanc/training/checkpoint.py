"""Checkpoints: ``last.pt`` after every epoch, ``best.pt`` at each new best validation score.

A checkpoint holds everything a resumed run needs to continue exactly: model, optimiser,
gradient scaler, scheduler, the epoch counter, early-stopping state, the metrics history and
the RNG states (python, numpy, torch). The sampler and torch RNGs are also re-seeded from
``(seed, epoch, rank)`` at each epoch start (see :class:`edgepanc.training.sampling.PatchSampler`), which is
what makes the epochs after a resume replay the uninterrupted run's batches bit for bit.
Every write is atomic, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepanc.errors import InputError
from edgepanc.io.atomic import atomic_path

CHECKPOINT_FORMAT = "edgepanc-train-checkpoint"
CHECKPOINT_VERSION = 1


def rng_states() -> dict[str, Any]:
    """Python, numpy (global) and torch (CPU and CUDA) generator states."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format tags) to ``path`` atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no checkpoint to resume from")
    try:
        # Our own file with numpy RNG states inside, hence weights_only=False.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise InputError(path, f"unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not an edgepanc training checkpoint")
    return state
