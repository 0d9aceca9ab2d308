"""Thermal protection: sources, pause/resume with hysteresis, timeout, no-sensor behaviour."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest

import edgepanc.thermal.sources as sources_module
from edgepanc.errors import EdgepancError
from edgepanc.thermal import (
    NO_SENSOR_MESSAGE,
    CompositeSource,
    NvmlSource,
    ScriptedSource,
    SysfsSource,
    ThermalError,
    ThermalGuard,
    ThermalLimits,
    ThermalTimeout,
    classify_sensor,
    discover_sources,
    readings_from_psutil,
)


class FakeTime:
    """A clock that only moves when the guard sleeps, so tests never wait."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_guard(readings, **limits) -> tuple[ThermalGuard, FakeTime]:
    fake = FakeTime()
    guard = ThermalGuard(
        ScriptedSource(readings), ThermalLimits(**limits), clock=fake.clock, sleep=fake.sleep
    )
    return guard, fake


def test_guard_pauses_until_cool_and_logs_the_pause(caplog):
    guard, fake = make_guard([80.0, 75.0, 62.0], cpu_c=68.0, hysteresis_c=5.0, poll_s=2.0)
    with caplog.at_level(logging.WARNING, logger="edgepanc.thermal"):
        event = guard.wait_until_cool()

    assert event is not None
    assert event.duration_s == pytest.approx(4.0)
    assert fake.sleeps == [2.0, 2.0]
    assert event.sensor == "cpu:scripted"
    assert event.limit_c == 68.0
    assert event.max_temps_c == {"cpu:scripted": 80.0}
    assert guard.events == [event]
    messages = [r.getMessage() for r in caplog.records]
    assert any("thermal pause at" in m and "80.0 C" in m for m in messages)
    assert any("lasted 4.0 s" in m and event.start in m for m in messages)

    summary = guard.summary()
    assert summary["pauses"] == 1
    assert summary["total_pause_s"] == pytest.approx(4.0)
    assert summary["max_temps_c"] == {"cpu:scripted": 80.0}


@pytest.mark.parametrize(
    ("hysteresis_c", "expected_polls"),
    [
        (0.0, 1),  # 67 C is at or below 68 - 0: resume at the first poll
        (5.0, 3),  # 67 and 64 C are above 68 - 5: wait for 62 C
    ],
)
def test_hysteresis_decides_when_the_pause_ends(hysteresis_c, expected_polls):
    guard, fake = make_guard(
        [70.0, 67.0, 64.0, 62.0], cpu_c=68.0, hysteresis_c=hysteresis_c, poll_s=1.0
    )
    event = guard.wait_until_cool()
    assert event is not None
    assert len(fake.sleeps) == expected_polls
    assert event.duration_s == pytest.approx(expected_polls * 1.0)


def test_cool_machine_returns_at_once_without_sleeping():
    guard, fake = make_guard([50.0])
    assert guard.wait_until_cool() is None
    assert fake.sleeps == []
    assert guard.events == []
    assert guard.over_limit() is False


def test_pause_longer_than_timeout_raises_with_the_event():
    guard, fake = make_guard([90.0], cpu_c=68.0, poll_s=3.0, timeout_s=10.0)
    with pytest.raises(ThermalTimeout, match="timed out after 12 s") as info:
        guard.wait_until_cool()
    assert isinstance(info.value, EdgepancError)  # the CLI turns it into one line
    assert fake.sleeps == [3.0, 3.0, 3.0, 3.0]
    assert info.value.event.duration_s == pytest.approx(12.0)
    assert guard.summary()["pauses"] == 1


def test_no_reading_during_a_pause_keeps_waiting():
    # A sensor that drops out mid-pause is no evidence of cooling.
    guard, fake = make_guard([{"cpu:a": 80.0}, {}, {"cpu:a": 60.0}], poll_s=1.0)
    event = guard.wait_until_cool()
    assert event is not None and len(fake.sleeps) == 2


def test_cpu_and_gpu_readings_have_their_own_limits():
    limits = ThermalLimits(cpu_c=68.0, gpu_c=72.0)
    guard = ThermalGuard(
        ScriptedSource(
            [
                {"gpu:0": 70.0, "cpu:pkg": 60.0},
                {"gpu:0": 73.0, "cpu:pkg": 60.0},
                {"gpu:0": 70.0, "cpu:pkg": 69.0},
            ]
        ),
        limits,
    )
    assert guard.check().over == {}
    assert guard.check().over == {"gpu:0": 73.0}
    status = guard.check()
    assert status.hot and status.over == {"cpu:pkg": 69.0}


def test_headroom_is_distance_to_nearest_limit():
    guard = ThermalGuard(ScriptedSource([{"gpu:0": 70.0, "cpu:pkg": 60.0}, {}]), ThermalLimits())
    assert guard.headroom_c() == pytest.approx(2.0)
    assert guard.headroom_c() is None


def test_limits_validation_and_single_max_temp():
    with pytest.raises(ThermalError, match="hysteresis"):
        ThermalLimits(hysteresis_c=-1.0)
    with pytest.raises(ThermalError, match="poll"):
        ThermalLimits(poll_s=0.0)
    limits = ThermalLimits.from_max_temp(80.0)
    assert (limits.cpu_c, limits.gpu_c) == (80.0, 80.0)


def test_no_sensor_logs_once_and_guard_never_pauses(monkeypatch, caplog):
    monkeypatch.setattr(sources_module, "_no_sensor_logged", False)
    silent = [ScriptedSource([{}], name="empty")]
    with caplog.at_level(logging.WARNING, logger="edgepanc.thermal"):
        assert discover_sources(candidates=silent) == []
        assert discover_sources(candidates=silent) == []
    assert [r.getMessage() for r in caplog.records] == [NO_SENSOR_MESSAGE]

    guard = ThermalGuard([], ThermalLimits(), sleep=pytest.fail)
    assert not guard.enabled
    assert guard.wait_until_cool() is None


def test_require_without_sensor_raises():
    with pytest.raises(ThermalError, match="no temperature sensor found"):
        discover_sources(require=True, candidates=[ScriptedSource([{}])])


def test_discover_keeps_only_sources_with_readings():
    cold = ScriptedSource([{}], name="empty")
    warm = ScriptedSource([40.0], name="warm")
    assert discover_sources(candidates=[cold, warm]) == [warm]


def _zone(root: Path, name: str, zone_type: str, temp: str | None) -> None:
    zone = root / name
    zone.mkdir()
    (zone / "type").write_text(zone_type + "\n")
    if temp is not None:
        (zone / "temp").write_text(temp + "\n")


def test_sysfs_reads_cpu_and_gpu_zones_in_millidegrees(tmp_path):
    _zone(tmp_path, "thermal_zone0", "x86_pkg_temp", "45000")
    _zone(tmp_path, "thermal_zone1", "GPU-therm", "51500")
    _zone(tmp_path, "thermal_zone2", "iwlwifi_1", "40000")  # Wi-Fi: not a processor
    _zone(tmp_path, "thermal_zone3", "cpu-thermal", None)  # unreadable: skipped
    _zone(tmp_path, "thermal_zone10", "CPU-therm", "-274000")  # "no value" marker
    _zone(tmp_path, "thermal_zone11", "soc_thermal", "not a number")
    assert SysfsSource(tmp_path).read() == {
        "cpu:thermal_zone0/x86_pkg_temp": 45.0,
        "gpu:thermal_zone1/GPU-therm": 51.5,
    }
    assert SysfsSource(tmp_path / "missing").read() == {}


def test_psutil_groups_are_classified_and_unrelated_sensors_dropped():
    entry = types.SimpleNamespace
    groups = {
        "coretemp": [entry(label="Package id 0", current=55.0), entry(label="", current=50.0)],
        "amdgpu": [entry(label="edge", current=61.0)],
        "nvme": [entry(label="Composite", current=45.0)],
        "acpitz": [entry(label="", current=30.0)],
    }
    assert readings_from_psutil(groups) == {
        "cpu:coretemp/Package id 0": 55.0,
        "cpu:coretemp/1": 50.0,
        "gpu:amdgpu/edge": 61.0,
    }


@pytest.mark.parametrize(
    ("name", "kind"),
    [("k10temp", "cpu"), ("gpu-thermal", "gpu"), ("cpu_thermal", "cpu"), ("PMIC-Die", None)],
)
def test_classify_sensor(name, kind):
    assert classify_sensor(name) == kind


def _fake_pynvml(temps: list[float | Exception], init_error: Exception | None = None):
    module = types.ModuleType("pynvml")
    module.NVML_TEMPERATURE_GPU = 0

    def init():
        if init_error is not None:
            raise init_error

    def temperature(handle, sensor):
        value = temps[handle]
        if isinstance(value, Exception):
            raise value
        return value

    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetCount = lambda: len(temps)
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetTemperature = temperature
    return module


def test_nvml_source_reads_each_gpu_and_skips_a_failing_one(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([64, RuntimeError("lost"), 71]))
    source = NvmlSource()
    assert source.available
    assert source.read() == {"gpu:0": 64.0, "gpu:2": 71.0}
    source.close()
    assert source.read() == {}


def test_nvml_source_without_driver_is_unavailable_not_an_error(monkeypatch):
    fake = _fake_pynvml([50], init_error=RuntimeError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    source = NvmlSource()
    assert not source.available
    assert source.read() == {}


def test_composite_merges_and_survives_a_failing_source():
    class Broken:
        name = "broken"

        def read(self) -> dict[str, float]:
            raise OSError("sensor went away")

    composite = CompositeSource(
        [ScriptedSource([{"cpu:a": 40.0}]), Broken(), ScriptedSource([{"gpu:0": 50.0}])]
    )
    assert composite.read() == {"cpu:a": 40.0, "gpu:0": 50.0}
    assert composite.name == "scripted+broken+scripted"
