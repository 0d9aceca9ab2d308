"""Thermal protection shared by training and the runtime: temperature sources and the guard."""

from edgepanc.thermal.guard import (
    PauseEvent,
    ThermalGuard,
    ThermalLimits,
    ThermalStatus,
    ThermalTimeout,
)
from edgepanc.thermal.sources import (
    NO_SENSOR_MESSAGE,
    CompositeSource,
    NvmlSource,
    PsutilSource,
    ScriptedSource,
    SensorKind,
    SysfsSource,
    TemperatureSource,
    ThermalError,
    classify_sensor,
    discover_sources,
    readings_from_psutil,
    sensor_kind,
)

__all__ = [
    "NO_SENSOR_MESSAGE",
    "CompositeSource",
    "NvmlSource",
    "PauseEvent",
    "PsutilSource",
    "ScriptedSource",
    "SensorKind",
    "SysfsSource",
    "TemperatureSource",
    "ThermalError",
    "ThermalGuard",
    "ThermalLimits",
    "ThermalStatus",
    "ThermalTimeout",
    "classify_sensor",
    "discover_sources",
    "readings_from_psutil",
    "sensor_kind",
]
