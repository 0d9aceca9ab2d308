"""Per-patch latency of a predictor: the median of several timed calls on one training patch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepanc.backends.base import Predictor


@dataclass(frozen=True)
class Latency:
    """Milliseconds per patch: median and spread of ``runs`` timed calls after one warm-up."""

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def patch_latency(
    predictor: Predictor, patch_size: Sequence[int], runs: int = 5, seed: int = 0
) -> Latency:
    """Time ``predictor`` on one random patch [1, 1, *patch_size]; the first call is not timed.

    The warm-up call pays one-off costs (ONNX Runtime's kernel selection, torch's allocator
    growth) that every later tile of a scan does not.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    batch = np.random.default_rng(seed).standard_normal((1, 1, *patch_size), dtype=np.float32)
    predictor(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predictor(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    return Latency(statistics.median(times), min(times), max(times), runs)
