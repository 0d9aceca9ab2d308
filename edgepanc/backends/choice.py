"""``run --backend auto``: time the variants that passed the accuracy tolerance here, keep the
fastest, and remember that choice per bundle and CPU model so that it is paid for once.

The compression stage times its variants on the machine that quantized the bundle; which one is
fastest depends on the CPU that runs it (OpenVINO bf16 is 2.7x to 7.7x faster than ONNX Runtime
fp32 per patch with native bf16 and not offered without it: docs/measurements/openvino_latency.md).
So ``auto`` times every candidate on a tile-shaped input (an untimed call, then a few timed
ones, the median) through a :class:`Timer` that tests script, and caches the winner in
``$EDGEPANC_HOME/backend_choice.json`` (written atomically; a corrupt file is ignored with a
warning and rewritten) keyed by the bundle's content (SHA-256 of ``model.json``), the CPU model
and the request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgepanc.backends.base import Predictor
from edgepanc.doctor import CPUINFO_PATH

log = logging.getLogger("edgepanc.backends")

CACHE_FILE = "backend_choice.json"
CACHE_FORMAT = 1
TIMED_CALLS = 3


class Timer(Protocol):
    """Milliseconds per call of the predictor ``load`` builds for the candidate ``name``."""

    def __call__(
        self, name: str, load: Callable[[], Predictor], patch_size: Sequence[int]
    ) -> float: ...


@dataclass(frozen=True)
class TileTimer:
    """Times a predictor on a tile-shaped input: one untimed call (first-call allocations and
    kernel selection), then the median of ``calls`` timed ones.

    Example: ``TileTimer(calls=3)("onnx_fp32", lambda: predictor, (32, 64, 64))`` -> ``52.4``.
    """

    calls: int = TIMED_CALLS
    seed: int = 0

    def __call__(
        self, name: str, load: Callable[[], Predictor], patch_size: Sequence[int]
    ) -> float:
        predictor = load()
        # Normalised CT intensities are roughly standard normal; an all-zero tile could take
        # shortcuts (denormals, sparsity) that a real tile does not.
        tile = np.random.default_rng(self.seed).standard_normal((1, 1, *patch_size), np.float32)
        predictor(tile)
        times = []
        for _ in range(self.calls):
            start = time.perf_counter()
            predictor(tile)
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)


def cpu_model(cpuinfo_path: Path = CPUINFO_PATH) -> str:
    """The CPU's model name and how many cores this process may use (both change the winner).

    Example: ``cpu_model()`` -> ``"Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz, 2 cores"``.
    """
    from edgepanc.backends.openvino_backend import usable_cores
    from edgepanc.doctor import _cpu_model

    try:
        text = cpuinfo_path.read_text()
    except OSError:
        text = ""
    return f"{_cpu_model(text)}, {usable_cores()} cores"


def bundle_content_id(root: Path, artifacts: Mapping[str, Any]) -> str:
    """SHA-256 of the bundle's ``model.json`` (of its artifact records when it has none).

    Example: ``bundle_content_id(Path("bundles/pancreas"), {})`` -> ``"3f9a..."``.
    """
    metadata = root / "model.json"
    if metadata.is_file():
        return hashlib.sha256(metadata.read_bytes()).hexdigest()
    text = json.dumps(artifacts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_path() -> Path:
    """``edgepanc_home()/backend_choice.json`` (``$EDGEPANC_HOME``, else the user cache dir)."""
    from edgepanc.bundle import edgepanc_home

    return edgepanc_home() / CACHE_FILE


@dataclass(frozen=True)
class ChoiceCache:
    """The measured choices, one entry per bundle content, CPU model and request.

    Example: ``ChoiceCache(Path("/tmp/choice.json")).get("abc|Xeon, 2 cores|auto/cpu/auto")`` ->
    ``None`` before anything was timed.
    """

    path: Path = field(default_factory=default_cache_path)

    def _entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "ignoring the backend choice cache %s (%s); it is rewritten", self.path, exc
            )
            return {}
        if (
            not isinstance(data, dict)
            or data.get("format") != CACHE_FORMAT
            or not isinstance(data.get("choices"), dict)
        ):
            log.warning(
                "ignoring the backend choice cache %s (not its format); it is rewritten", self.path
            )
            return {}
        return data["choices"]

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries().get(key)
        valid = isinstance(entry, dict) and isinstance(entry.get("artifact"), str)
        return entry if valid else None

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Add ``entry`` under ``key``; a cache that cannot be written costs a warning, not the run."""
        from edgepanc.io.atomic import write_json_atomic

        choices = self._entries()
        choices[key] = dict(entry)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"format": CACHE_FORMAT, "choices": choices})
        except OSError as exc:
            log.warning("cannot write the backend choice cache %s: %s", self.path, exc)


@dataclass(frozen=True)
class AutoTiming:
    """How ``auto`` measures: the timer, the cache (None: no cache) and this CPU's model.

    Example: ``AutoTiming(timer=lambda name, load, patch: {"a": 5.0}[name], cache=None, cpu="x")``.
    """

    timer: Timer = field(default_factory=TileTimer)
    cache: ChoiceCache | None = field(default_factory=ChoiceCache)
    cpu: str = field(default_factory=cpu_model)


@dataclass(frozen=True)
class MeasuredChoice:
    """The fastest candidate, every candidate's time, and whether the cache answered."""

    artifact: str
    timings_ms: dict[str, float]
    cached: bool

    def reason(self, cpu: str) -> str:
        timings = ", ".join(
            f"{n} {ms:.1f} ms" for n, ms in sorted(self.timings_ms.items(), key=lambda t: t[1])
        )
        source = "cached choice, timed earlier" if self.cached else "timed now"
        return (
            f"fastest of {len(self.timings_ms)} variants within the accuracy tolerance on {cpu} "
            f"({source}, ms per tile: {timings})"
        )


def measured_choice(
    candidates: Mapping[str, Callable[[], Predictor]],
    patch_size: Sequence[int],
    timing: AutoTiming,
    key: str,
) -> MeasuredChoice:
    """The fastest of ``candidates`` (name -> loader) by ``timing``, from its cache when the
    cache holds a choice for ``key`` that is still a candidate.

    Example: ``measured_choice({"a": load_a, "b": load_b}, (32, 64, 64), AutoTiming(), key)``
    -> ``MeasuredChoice("b", {"a": 52.4, "b": 17.9}, cached=False)``.
    """
    if timing.cache is not None:
        entry = timing.cache.get(key)
        if entry is not None and entry["artifact"] in candidates:
            return MeasuredChoice(entry["artifact"], dict(entry.get("timings_ms", {})), cached=True)
    timings = {
        name: float(timing.timer(name, load, patch_size)) for name, load in candidates.items()
    }
    fastest = min(timings, key=timings.__getitem__)
    if timing.cache is not None:
        timing.cache.put(
            key, {"artifact": fastest, "timings_ms": timings, "patch_size": list(patch_size)}
        )
    return MeasuredChoice(fastest, timings, cached=False)


__all__ = [
    "AutoTiming",
    "ChoiceCache",
    "MeasuredChoice",
    "TileTimer",
    "Timer",
    "bundle_content_id",
    "cpu_model",
    "default_cache_path",
    "measured_choice",
]
