"""Checkpoints: ``last.pt`` after every epoch, ``best.pt`` at each new best validation score.

A checkpoint holds everything a resumed run needs to continue exactly: model, optimiser,
gradient scaler, scheduler, the epoch counter, early-stopping state, the metrics history and
the RNG states (python, numpy, torch). The sampler and torch RNGs are also re-seeded from
``(seed, epoch, rank)`` at each epoch start (see :class:`edgepanc.training.sampling.PatchSampler`), which is
what makes the epochs after a resume replay the uninterrupted run's batches bit for bit.
Every write is atomic, so a run killed at any moment leaves the previous checkpoint intact.

A checkpoint holds tensors and plain values only (dicts, lists, tuples, str, int, float, bool,
None): run folders are shared, and a file that could only be read by unpickling could run code.
The RNG states are stored in that form (:func:`rng_states`), :func:`save_checkpoint` refuses
anything else, and :func:`load_checkpoint` reads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepanc.errors import InputError
from edgepanc.io.atomic import atomic_path
from edgepanc.io.plain_torch import load_plain_torch

CHECKPOINT_FORMAT = "edgepanc-train-checkpoint"
# 2: RNG states as tensors and plain values (version 1 pickled numpy's and is not read).
CHECKPOINT_VERSION = 2
NOT_A_CHECKPOINT = "not an edgepanc training checkpoint"


def rng_states() -> dict[str, Any]:
    """Python, numpy (global) and torch (CPU and CUDA) generator states, as plain values.

    Example::

        >>> restore_rng_states(rng_states())  # a no-op round trip
    """
    version, internal, gauss_next = random.getstate()
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": kind,
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators to what :func:`rng_states` returned."""
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["bit_generator"],
            numpy["key"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and tensors.

    TypeError for anything ``torch.load(weights_only=True)`` would refuse, naming where it is.

    Example::

        >>> plain({"score": np.float64(0.5), "history": [(1, np.int64(2))]})
        {'score': 0.5, 'history': [(1, 2)]}
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    if isinstance(value, dict):
        return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where} is a {type(value).__name__}: checkpoints hold plain values only")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format tags) to ``path`` atomically, as plain values only.

    Example::

        >>> save_checkpoint("run/last.pt", {"model": model.state_dict(), "rng": rng_states()})
    """
    payload = plain({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError if it is not one.

    Nothing in the file is unpickled, so a hostile ``last.pt`` is refused without running.

    Example::

        >>> epochs_done = load_checkpoint("run/last.pt")["state"]["epoch"]
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no checkpoint to resume from")
    state = load_plain_torch(path, NOT_A_CHECKPOINT)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, NOT_A_CHECKPOINT)
    if state.get("version") != CHECKPOINT_VERSION:
        raise InputError(
            path,
            f"checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}, "
            "the one this edgepanc reads",
        )
    return state
