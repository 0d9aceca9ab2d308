"""Where a CPU training step's time goes: the optimiser step after different work in between.

    python scripts/train_step_breakdown.py DATA [--recipe cpu-bf16] [--steps 40] [--threads 2]

Builds the recipe's :class:`~edgepanc.training.steps.StepRunner` on DATA's training cases, draws
``--steps`` batches first, then times the same optimiser steps four times over with something
else run before each step: nothing, a 20 ms sleep, a sum over a 160 MB array, and drawing a
batch as an epoch does. Prints the median step of each (the first five steps left out), with
numpy's BLAS as it is and held to one thread (:func:`edgepanc.blas.blas_on_one_thread`).
Run it alone on the machine: docs/measurements/blas_threads.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgepanc.blas import blas_on_one_thread
from edgepanc.preprocessing import plan_from_cases
from edgepanc.training.dataset import prepare_cases
from edgepanc.training.distributed import DistContext
from edgepanc.training.loop import training_device
from edgepanc.training.recipes import resolve_train_config
from edgepanc.training.runner import labelled_cases, network_config_for
from edgepanc.training.steps import StepRunner
from edgepanc.training.train_state import TrainState


def median_step_ms(steps: StepRunner, batches: list, between: Callable[[], object]) -> float:
    state = TrainState()
    times = []
    for batch in batches:
        between()
        start = time.perf_counter()
        steps.train_step(batch, state)
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--recipe", default="cpu-bf16")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = resolve_train_config(
        str(args.data), "unused", {"threads": args.threads, "device": "cpu"}, recipe=args.recipe
    )
    device, amp_dtype = training_device(config, DistContext())
    cases = labelled_cases(args.data)
    plan = plan_from_cases(cases, config.patch_size, config.target_spacing, seed=config.seed)
    train = prepare_cases([c for c in cases if c.split == "train"], plan, "preprocessing")
    steps = StepRunner(config, network_config_for(config), device, amp_dtype, train, DistContext())
    steps.sampler.start_epoch(0)
    batches = [steps.sampler.sample_batch(config.batch_size) for _ in range(args.steps)]
    big = np.random.default_rng(0).random(40_000_000, dtype=np.float32)
    between: dict[str, Callable[[], object]] = {
        "nothing": lambda: None,
        "sleep 20 ms": lambda: time.sleep(0.02),
        "sum over 160 MB": big.sum,
        "draw a batch": lambda: steps.sampler.sample_batch(config.batch_size),
    }
    print(f"{len(train)} training cases, {torch.get_num_threads()} torch threads, {amp_dtype}")
    for name, work in between.items():
        default = median_step_ms(steps, batches, work)
        with blas_on_one_thread():
            one = median_step_ms(steps, batches, work)
        print(f"{name:>16}: step {default:.0f} ms; BLAS on one thread {one:.0f} ms")


if __name__ == "__main__":
    main()
