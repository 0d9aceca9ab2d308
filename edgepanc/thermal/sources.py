"""Temperature sources: NVML (NVIDIA GPUs), psutil and sysfs thermal zones (CPU, SoC), scripted.

Every source returns ``{label: degrees C}``; an empty dict means "no reading this time". A label
starts with the kind of chip it measures, ``"gpu:"`` or ``"cpu:"``, so the guard can hold each kind
to its own limit: ``"gpu:0"``, ``"cpu:coretemp/Package id 0"``, ``"cpu:thermal_zone0/x86_pkg_temp"``.
Sensors that measure neither (NVMe drives, Wi-Fi cards, chipsets, power ICs) are left out: holding
a training run back because a disk is warm would only waste time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from edgepanc.errors import BudgetError

log = logging.getLogger(__name__)

SensorKind = Literal["cpu", "gpu"]

DEFAULT_SYSFS_ROOT = Path("/sys/class/thermal")

# Lower-case name fragments. GPU is tested first: "gpu-thermal" must not count as a CPU sensor.
_GPU_PATTERNS = ("gpu", "amdgpu", "radeon", "nouveau")
_CPU_PATTERNS = (
    "coretemp",  # Intel
    "k10temp",  # AMD
    "k8temp",
    "zenpower",
    "cpu",  # cpu_thermal (Raspberry Pi), cpu-thermal, CPU-therm (Jetson), TCPU
    "x86_pkg_temp",
    "soc",  # SOC-therm, soc_thermal: the CPU shares the die on embedded boards
)

# Below this a sensor is reporting "no value" (some zones return -274000 millidegrees).
_MIN_PLAUSIBLE_C = -50.0


class ThermalError(BudgetError):
    """Temperature protection cannot do what was asked (e.g. a sensor was required, none exists)."""


@runtime_checkable
class TemperatureSource(Protocol):
    """Anything that reads temperatures: ``read()`` -> ``{"cpu:..."|"gpu:...": degrees C}``."""

    name: str

    def read(self) -> dict[str, float]: ...


def classify_sensor(name: str) -> SensorKind | None:
    """``"gpu"``, ``"cpu"`` or None (a sensor of neither) from a driver or zone name."""
    lowered = name.lower()
    if any(p in lowered for p in _GPU_PATTERNS):
        return "gpu"
    if any(p in lowered for p in _CPU_PATTERNS):
        return "cpu"
    return None


def sensor_kind(label: str) -> SensorKind:
    """The kind of a reading's label: its ``cpu:``/``gpu:`` prefix, else guessed from the name.

    Unknown names count as CPU: an unlabelled scripted reading is held to the CPU limit.
    """
    prefix, sep, _ = label.partition(":")
    if sep and prefix in ("cpu", "gpu"):
        return prefix  # type: ignore[return-value]
    return classify_sensor(label) or "cpu"


def _plausible(temp_c: float) -> bool:
    return temp_c > _MIN_PLAUSIBLE_C and temp_c == temp_c  # the second test rejects NaN


class NvmlSource:
    """NVIDIA GPU core temperatures through NVML (``pynvml`` from nvidia-ml-py).

    ``available`` is False when pynvml is missing or NVML fails to start (no driver, no GPU);
    a GPU that fails one read is skipped for that read only.
    """

    name = "nvml"

    def __init__(self) -> None:
        self._nvml = None
        self._handles: list[object] = []
        try:
            import pynvml  # lazy: importing it is cheap, but nvmlInit needs a driver

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
            if not self._handles:  # a driver but no GPU: nothing to read, release NVML now
                self.close()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.debug("NVML unavailable: %s", exc)

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def read(self) -> dict[str, float]:
        if self._nvml is None:
            return {}
        readings: dict[str, float] = {}
        for index, handle in enumerate(self._handles):
            try:
                temp = float(
                    self._nvml.nvmlDeviceGetTemperature(handle, self._nvml.NVML_TEMPERATURE_GPU)
                )
            except Exception as exc:
                log.debug("NVML read of GPU %d failed: %s", index, exc)
                continue
            if _plausible(temp):
                readings[f"gpu:{index}"] = temp
        return readings

    def close(self) -> None:
        """Release NVML; reads after this return nothing."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        self._nvml = None


def readings_from_psutil(groups: Mapping[str, Iterable[object]]) -> dict[str, float]:
    """Labelled readings from the mapping ``psutil.sensors_temperatures()`` returns.

    Each entry has ``.label`` and ``.current``; the group (driver) name decides the kind, and the
    entry label is consulted when the driver name says nothing (e.g. ``acpitz`` zones).
    """
    readings: dict[str, float] = {}
    for group, entries in groups.items():
        for index, entry in enumerate(entries):
            entry_label = getattr(entry, "label", "") or str(index)
            kind = classify_sensor(group) or classify_sensor(entry_label)
            current = getattr(entry, "current", None)
            if kind is None or current is None or not _plausible(float(current)):
                continue
            readings[f"{kind}:{group}/{entry_label}"] = float(current)
    return readings


class PsutilSource:
    """CPU (and AMD GPU) temperatures from ``psutil.sensors_temperatures()`` (Linux, FreeBSD)."""

    name = "psutil"

    def read(self) -> dict[str, float]:
        import psutil

        sensors = getattr(psutil, "sensors_temperatures", None)
        if sensors is None:  # macOS and Windows builds of psutil have no such function
            return {}
        try:
            groups = sensors()
        except Exception as exc:  # unreadable hwmon files raise OSError on some kernels
            log.debug("psutil.sensors_temperatures failed: %s", exc)
            return {}
        return readings_from_psutil(groups)

    @property
    def available(self) -> bool:
        return bool(self.read())


class SysfsSource:
    """Linux thermal zones: ``<root>/thermal_zone*/temp`` in millidegrees, ``type`` names the zone.

    This is where embedded boards (Jetson, Raspberry Pi) report CPU, GPU and SoC temperatures.
    """

    name = "sysfs"

    def __init__(self, root: str | Path = DEFAULT_SYSFS_ROOT) -> None:
        self.root = Path(root)

    def read(self) -> dict[str, float]:
        readings: dict[str, float] = {}
        for zone in sorted(self.root.glob("thermal_zone*"), key=_zone_number):
            try:
                zone_type = (zone / "type").read_text().strip()
                millidegrees = int((zone / "temp").read_text().strip())
            except (OSError, ValueError) as exc:
                # Some zones exist but refuse reads (EINVAL, ENODATA) while their device sleeps.
                log.debug("thermal zone %s unreadable: %s", zone, exc)
                continue
            kind = classify_sensor(zone_type)
            temp = millidegrees / 1000.0
            if kind is not None and _plausible(temp):
                readings[f"{kind}:{zone.name}/{zone_type}"] = temp
        return readings

    @property
    def available(self) -> bool:
        return bool(self.read())


def _zone_number(path: Path) -> int:
    # thermal_zone10 sorts after thermal_zone9
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else -1


class ScriptedSource:
    """Replays scripted readings, one per ``read()``, then repeats the last (for tests).

    Items are floats (one sensor named ``label``) or dicts ``{label: degrees}``; an empty dict
    scripts "no reading".
    """

    def __init__(
        self,
        sequence: Sequence[float | Mapping[str, float]],
        label: str = "cpu:scripted",
        name: str = "scripted",
    ) -> None:
        if not sequence:
            raise ValueError("ScriptedSource needs at least one reading")
        self.name = name
        self._readings = [
            dict(item) if isinstance(item, Mapping) else {label: float(item)} for item in sequence
        ]
        self.calls = 0

    def read(self) -> dict[str, float]:
        reading = self._readings[min(self.calls, len(self._readings) - 1)]
        self.calls += 1
        return dict(reading)

    @property
    def available(self) -> bool:
        return any(self._readings)


class CompositeSource:
    """Merges several sources into one reading; a source that raises is skipped for that read."""

    def __init__(self, sources: Sequence[TemperatureSource]) -> None:
        self.sources = list(sources)
        self.name = "+".join(s.name for s in self.sources) or "none"

    def read(self) -> dict[str, float]:
        readings: dict[str, float] = {}
        for source in self.sources:
            try:
                readings.update(source.read())
            except Exception as exc:  # one flaky sensor must not stop a training run
                log.debug("temperature source %s failed: %s", source.name, exc)
        return readings

    @property
    def available(self) -> bool:
        return bool(self.read())


NO_SENSOR_MESSAGE = "no temperature sensor found: thermal protection is off"
_no_sensor_logged = False


def default_candidates() -> list[TemperatureSource]:
    """Every kind of real source this package knows, whether or not this machine has it."""
    return [NvmlSource(), PsutilSource(), SysfsSource()]


def discover_sources(
    require: bool = False,
    candidates: Sequence[TemperatureSource] | None = None,
    missing_level: int = logging.WARNING,
) -> list[TemperatureSource]:
    """The sources among ``candidates`` (default: NVML, psutil, sysfs) that give a reading now.

    With none: raise :class:`ThermalError` if ``require``, else log once per process (at
    ``missing_level``) that thermal protection is off and return an empty list.
    """
    global _no_sensor_logged
    found = [s for s in (default_candidates() if candidates is None else candidates) if _reads(s)]
    if found:
        log.debug("temperature sources: %s", ", ".join(s.name for s in found))
        return found
    if require:
        raise ThermalError(
            "no temperature sensor found (tried NVML, psutil, /sys/class/thermal) "
            "but one was required"
        )
    if not _no_sensor_logged:
        log.log(missing_level, NO_SENSOR_MESSAGE)
        _no_sensor_logged = True
    return []


def _reads(source: TemperatureSource) -> bool:
    try:
        return bool(source.read())
    except Exception as exc:
        log.debug("temperature source %s failed: %s", source.name, exc)
        return False
