"""ThermalGuard: hold work back while a CPU or GPU is above its temperature limit.

Training calls :meth:`ThermalGuard.wait_until_cool` between steps: it returns at once when every
sensor is within its limit, otherwise it polls until every sensor has dropped ``hysteresis_c``
below its limit (so the run does not flap on and off at the threshold), logs the pause and
returns it as a :class:`PauseEvent`. A pause longer than ``timeout_s`` raises
:class:`ThermalTimeout`, so the caller can checkpoint and stop cleanly instead of hanging.

The runtime backs off in steps rather than pausing at once. It builds that on :meth:`over_limit`
and reuses the pause as the last step, e.g. before each batch of tiles::

    def next_batch_size(guard: ThermalGuard, batch_size: int) -> int:
        if not guard.over_limit():
            return batch_size
        if batch_size > 1:
            return batch_size // 2    # first steps: less work per call, progress continues
        guard.wait_until_cool()       # last step: pause (logged, counted in summary())
        return batch_size

:meth:`headroom_c` (degrees left before the nearest limit) serves a graded policy, e.g. grow
the batch back once the headroom exceeds ``hysteresis_c`` again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from edgepanc.thermal.sources import (
    CompositeSource,
    SensorKind,
    TemperatureSource,
    ThermalError,
    discover_sources,
    sensor_kind,
)

log = logging.getLogger(__name__)


class ThermalTimeout(ThermalError):
    """A thermal pause lasted longer than ``ThermalLimits.timeout_s``; ``event`` describes it."""

    def __init__(self, message: str, event: PauseEvent) -> None:
        super().__init__(message)
        self.event = event


@dataclass(frozen=True)
class ThermalLimits:
    """Temperature limits in degrees C; defaults follow the original training setup."""

    cpu_c: float = 68.0
    gpu_c: float = 72.0
    hysteresis_c: float = 5.0  # resume only at or below limit - hysteresis
    poll_s: float = 5.0  # seconds between readings while paused
    timeout_s: float = 1800.0  # a pause longer than this raises ThermalTimeout

    def __post_init__(self) -> None:
        if self.hysteresis_c < 0:
            raise ThermalError(f"hysteresis must be >= 0 C, got {self.hysteresis_c}")
        if self.poll_s <= 0 or self.timeout_s <= 0:
            raise ThermalError(
                f"poll and timeout must be > 0 s, got poll {self.poll_s}, timeout {self.timeout_s}"
            )
        for limit in (self.cpu_c, self.gpu_c):
            if limit - self.hysteresis_c <= 0:
                raise ThermalError(
                    f"temperature limit {limit} C minus hysteresis {self.hysteresis_c} C "
                    "must stay above 0 C"
                )

    @classmethod
    def from_max_temp(cls, max_temp_c: float, **overrides: float) -> ThermalLimits:
        """One limit for CPU and GPU alike, as ``edgepanc run --max-temp`` gives it."""
        return cls(cpu_c=max_temp_c, gpu_c=max_temp_c, **overrides)

    def limit_for(self, label: str) -> float:
        kind: SensorKind = sensor_kind(label)
        return self.gpu_c if kind == "gpu" else self.cpu_c


@dataclass(frozen=True)
class ThermalStatus:
    """One check: all readings, and those above their limit (label -> degrees C)."""

    readings: dict[str, float]
    over: dict[str, float]

    @property
    def hot(self) -> bool:
        return bool(self.over)


@dataclass(frozen=True)
class PauseEvent:
    """One thermal pause, as logged and reported."""

    start: str  # wall clock, ISO 8601 UTC
    duration_s: float
    sensor: str  # the sensor furthest over its limit when the pause began
    limit_c: float  # that sensor's limit
    max_temps_c: dict[str, float] = field(default_factory=dict)  # per sensor, over the pause

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _merge_max(into: dict[str, float], readings: dict[str, float]) -> None:
    for label, temp in readings.items():
        if temp > into.get(label, float("-inf")):
            into[label] = temp


def _format_temps(temps: dict[str, float]) -> str:
    return ", ".join(f"{label} {temp:.1f} C" for label, temp in sorted(temps.items())) or "none"


class ThermalGuard:
    """Checks temperatures against :class:`ThermalLimits`; pauses, logs and counts pauses.

    ``clock`` (monotonic seconds) and ``sleep`` are injectable so tests run without waiting.
    With no sources the guard never pauses (thermal protection is off).
    """

    def __init__(
        self,
        sources: TemperatureSource | Sequence[TemperatureSource],
        limits: ThermalLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        source_list = [sources] if isinstance(sources, TemperatureSource) else list(sources)
        self.source = CompositeSource(source_list)
        self.limits = limits or ThermalLimits()
        self.clock = clock
        self.sleep = sleep
        self.log = logger or log
        self.wall_clock = wall_clock
        self.events: list[PauseEvent] = []
        self.max_temps_c: dict[str, float] = {}

    @classmethod
    def discover(
        cls,
        limits: ThermalLimits | None = None,
        require: bool = False,
        missing_level: int = logging.WARNING,
    ) -> ThermalGuard:
        """A guard over the sensors this machine has (see :func:`discover_sources`)."""
        return cls(discover_sources(require=require, missing_level=missing_level), limits)

    @property
    def enabled(self) -> bool:
        return bool(self.source.sources)

    def check(self) -> ThermalStatus:
        """Read every sensor once and compare each with the limit for its kind."""
        readings = self.source.read()
        _merge_max(self.max_temps_c, readings)
        over = {
            label: temp for label, temp in readings.items() if temp > self.limits.limit_for(label)
        }
        return ThermalStatus(readings=readings, over=over)

    def over_limit(self) -> bool:
        """True while any sensor is above its limit (one reading)."""
        return self.check().hot

    def headroom_c(self) -> float | None:
        """Degrees left before the nearest limit (negative when over); None without a reading."""
        readings = self.check().readings
        if not readings:
            return None
        return min(self.limits.limit_for(label) - temp for label, temp in readings.items())

    def _is_cool(self, readings: dict[str, float]) -> bool:
        # No reading tells nothing: keep waiting (bounded by timeout_s) rather than resume blind.
        return bool(readings) and all(
            temp <= self.limits.limit_for(label) - self.limits.hysteresis_c
            for label, temp in readings.items()
        )

    def wait_until_cool(self) -> PauseEvent | None:
        """Return None at once if nothing is over its limit; else pause until cool and return it.

        Raises :class:`ThermalTimeout` when still not cool after ``limits.timeout_s``.
        """
        status = self.check()
        if not status.hot:
            return None
        sensor = max(
            status.over, key=lambda label: status.over[label] - self.limits.limit_for(label)
        )
        limit = self.limits.limit_for(sensor)
        start_wall = self.wall_clock().isoformat(timespec="seconds")
        start = self.clock()
        pause_max = dict(status.readings)
        self.log.warning(
            "thermal pause at %s: %s (limit %.1f C); waiting until every sensor is <= limit - %.1f C",
            start_wall,
            _format_temps(status.over),
            limit,
            self.limits.hysteresis_c,
        )
        while True:
            self.sleep(self.limits.poll_s)
            readings = self.check().readings
            _merge_max(pause_max, readings)
            elapsed = float(self.clock() - start)
            event = PauseEvent(start_wall, elapsed, sensor, limit, pause_max)
            if self._is_cool(readings):
                break
            if elapsed >= self.limits.timeout_s:
                self.events.append(event)
                message = (
                    f"thermal pause timed out after {elapsed:.0f} s "
                    f"(limit {self.limits.timeout_s:.0f} s): {_format_temps(readings)}"
                )
                self.log.error(message)
                raise ThermalTimeout(message, event)
        self.events.append(event)
        self.log.warning(
            "thermal pause ended: started %s, lasted %.1f s, max %s",
            start_wall,
            elapsed,
            _format_temps(pause_max),
        )
        return event

    def summary(self) -> dict[str, Any]:
        """Pauses so far, their total length and the hottest reading seen per sensor."""
        return {
            "enabled": self.enabled,
            "sources": self.source.name,
            "limits": asdict(self.limits),
            "pauses": len(self.events),
            "total_pause_s": sum(e.duration_s for e in self.events),
            "max_temps_c": dict(self.max_temps_c),
            "events": [e.to_dict() for e in self.events],
        }
