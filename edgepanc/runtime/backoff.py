"""Thermal back-off between tile batches, built on :class:`edgepanc.thermal.ThermalGuard`.

Above the limit the runtime first halves its tile batch (less work per call, progress goes on),
and once it is down to one tile it pauses until every sensor is at or below limit - hysteresis
(the guard's :meth:`~edgepanc.thermal.ThermalGuard.wait_until_cool`). The batch stays reduced
for the rest of the case: growing it back right after cooling would reheat the chip and make the
run oscillate around the limit. Each step is recorded as a :class:`ThrottleEvent` for the JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from edgepanc.thermal import ThermalGuard


class TileBatchPolicy(Protocol):
    """Anything with a mutable ``tile_batch`` that the tiler reads before each batch."""

    tile_batch: int


@dataclass(frozen=True)
class ThrottleEvent:
    """One back-off step: when, how hot, what was done and how long it held work back."""

    time: str  # wall clock, ISO 8601 UTC
    temperatures_c: dict[str, float]
    action: str  # "halve_tile_batch" or "pause"
    tile_batch: int  # tile batch after the step
    duration_s: float  # pause length; 0 for a batch reduction

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ThermalBackoff:
    """Call between tile batches (``between_batches=``); shrinks ``policy.tile_batch`` or pauses."""

    def __init__(
        self,
        guard: ThermalGuard,
        policy: TileBatchPolicy,
        wall_clock: Callable[[], str] = _utc_now,
    ) -> None:
        self.guard = guard
        self.policy = policy
        self.wall_clock = wall_clock
        self.events: list[ThrottleEvent] = []

    def __call__(self) -> None:
        if not self.guard.enabled:
            return
        status = self.guard.check()
        if not status.hot:
            return
        if self.policy.tile_batch > 1:
            self.policy.tile_batch = max(1, self.policy.tile_batch // 2)
            self.events.append(
                ThrottleEvent(
                    self.wall_clock(),
                    status.readings,
                    "halve_tile_batch",
                    self.policy.tile_batch,
                    0.0,
                )
            )
            return
        start_wall = self.wall_clock()
        pause = self.guard.wait_until_cool()
        if pause is None:  # cooled between the two readings
            return
        self.events.append(
            ThrottleEvent(
                start_wall, pause.max_temps_c, "pause", self.policy.tile_batch, pause.duration_s
            )
        )
