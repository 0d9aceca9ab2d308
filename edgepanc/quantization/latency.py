"""Per-patch latency of predictors: the median of several timed calls on one patch.

:func:`interleaved_latencies` times several predictors in turns (A B C A B C ...), so that load
from other jobs on a shared machine hits every variant alike and their ratios stay meaningful;
timed one after another, a 10% difference flipped with the machine's load.

Each turn starts with one untimed call, because ONNX Runtime's worker threads keep spinning for
a while after a run and slow the first call of the next session; without it, INT8 and fp32
graphs timed in strict alternation looked alike although INT8 is the faster one run alone
(docs/measurements/quantization_cpu_recipe.md).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgepanc.backends.base import Predictor


@dataclass(frozen=True)
class Latency:
    """Milliseconds per patch: median and spread of ``runs`` timed calls, each after a settling call."""

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def interleaved_latencies(
    predictors: Mapping[str, Predictor], patch_size: Sequence[int], rounds: int = 5, seed: int = 0
) -> dict[str, Latency]:
    """Latency per predictor: ``rounds`` turns over all of them, each an untimed settling call
    followed by one timed call."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    batch = np.random.default_rng(seed).standard_normal((1, 1, *patch_size), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predictor in predictors.items():
            predictor(batch)  # settles: warm-up on the first turn, other sessions' threads after
            start = time.perf_counter()
            predictor(batch)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {
        name: Latency(statistics.median(t), min(t), max(t), rounds) for name, t in times.items()
    }
