"""Where an epoch's training batches come from: the training process, or background workers.

On a GPU the training process also draws and augments every patch, and the GPU waits for it.
With ``workers > 0`` a :class:`torch.utils.data.DataLoader`
runs that many processes, each with its own copy of the :class:`PatchSampler` re-seeded from
``(seed, epoch, rank, worker + 1)``; worker ``w`` draws the batches of steps ``w, w + n, ...``
and the loader hands them out in step order. An epoch's batches therefore depend only on the
seed, the epoch and the number of workers, so ``--resume`` replays them exactly; a different
``--workers`` is a different experiment. ``workers == 0`` draws in the training process from the
sampler's stream for worker 0, as before this option existed.

Workers shorten a GPU step by about a quarter to a third (docs/measurements/gpu_recipe_sweep.md,
``--workers``); on a 2-core CPU the network needs both cores: leave 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from edgepanc.training.sampling import PatchSampler

Batch = dict[str, np.ndarray]


class EpochBatches(torch.utils.data.IterableDataset):
    """The ``steps`` batches of one epoch, split over the loader's workers by step."""

    def __init__(self, sampler: PatchSampler, epoch: int, steps: int, batch_size: int) -> None:
        super().__init__()
        self.sampler = sampler
        self.epoch = epoch
        self.steps = steps
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # In a worker process this is the worker's own copy of the sampler.
        self.sampler.start_epoch(self.epoch, worker=worker + 1)
        for _ in range(worker, self.steps, workers):
            yield self.sampler.sample_batch(self.batch_size)


def _as_is(batch: Batch) -> Batch:
    # The train step takes numpy arrays; DataLoader would otherwise convert them to tensors.
    return batch


def epoch_batches(
    sampler: PatchSampler, epoch: int, steps: int, batch_size: int, workers: int = 0
) -> Iterator[Batch]:
    """The batches of ``epoch`` in step order (see the module docstring)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        for _ in range(steps):
            yield sampler.sample_batch(batch_size)
        return
    loader_options: dict[str, Any] = {}
    if "fork" in torch.multiprocessing.get_all_start_methods():
        # Workers share the prepared cases copy-on-write instead of receiving a pickled copy.
        loader_options["multiprocessing_context"] = "fork"
    loader = torch.utils.data.DataLoader(
        EpochBatches(sampler, epoch, steps, batch_size),
        batch_size=None,
        num_workers=min(workers, steps),
        collate_fn=_as_is,
        prefetch_factor=2,
        **loader_options,
    )
    yield from loader


__all__ = ["EpochBatches", "epoch_batches"]
