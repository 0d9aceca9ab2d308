"""Thermal back-off in the runtime: halve the tile batch, then pause, recorded in the case JSON."""

from __future__ import annotations

import json
from pathlib import Path

from edgepanc.inferers.sliding_window import BatchPolicy
from edgepanc.runtime.backoff import ThermalBackoff
from edgepanc.runtime.pipeline import RunConfig, run_case
from edgepanc.runtime.roi import RoiConfig
from edgepanc.thermal import ScriptedSource, ThermalGuard, ThermalLimits

from runtime_support import phantom, threshold_model, write_image


class FakeClock:
    """Monotonic clock that advances only when the guard sleeps: no real waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _guard(readings: list[float]) -> ThermalGuard:
    clock = FakeClock()
    limits = ThermalLimits.from_max_temp(80.0, hysteresis_c=5.0, poll_s=2.0)
    return ThermalGuard(ScriptedSource(readings), limits, clock=clock, sleep=clock.sleep)


def test_backoff_halves_then_pauses_until_below_hysteresis() -> None:
    policy = BatchPolicy(4)
    # batch 4 -> 2 -> 1, then pause: 85 and 77 keep it paused (77 > 80 - 5), 74 resumes
    backoff = ThermalBackoff(_guard([85, 84, 83, 82, 85, 77, 74, 60]), policy)
    for _ in range(4):
        backoff()
    actions = [(e.action, e.tile_batch) for e in backoff.events]
    assert actions == [("halve_tile_batch", 2), ("halve_tile_batch", 1), ("pause", 1)]
    pause = backoff.events[-1]
    assert pause.duration_s == 6.0  # three polls of 2 s: 85, 77, then 74
    assert max(pause.temperatures_c.values()) == 85.0
    backoff()  # cool again: nothing more happens
    assert len(backoff.events) == 3 and policy.tile_batch == 1


def test_no_sensor_means_no_backoff() -> None:
    policy = BatchPolicy(4)
    backoff = ThermalBackoff(ThermalGuard([]), policy)
    backoff()
    assert policy.tile_batch == 4 and backoff.events == []


def test_run_case_backs_off_and_recovers(tmp_path: Path) -> None:
    scan = write_image(phantom(), tmp_path / "in" / "hot_0000.nii.gz")
    model = threshold_model()
    config = RunConfig(out_dir=tmp_path / "out", tile_batch=4, step=0.5, roi=RoiConfig(mode="off"))
    config.out_dir.mkdir()
    guard = _guard([90, 90, 90, 90, 60])
    report = run_case(scan, model, config, guard)

    saved = json.loads((tmp_path / "out" / "hot.json").read_text())
    actions = [e["action"] for e in saved["throttle_events"]]
    assert actions == ["halve_tile_batch", "halve_tile_batch", "pause"]
    assert saved["throttle_events"][-1]["duration_s"] == 2.0
    assert saved["throttle_events"] == report.throttle_events
    # the predictor saw the batch shrink 4 -> 2 -> 1 and the run finished all tiles
    sizes = model.predictor.batches
    assert sizes[:3] == [4, 2, 1] and set(sizes[3:]) == {1}
    assert sum(sizes) == saved["tile_count"]
    assert (tmp_path / "out" / "hot.nii.gz").is_file()


def test_require_thermal_without_sensor_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    import edgepanc.thermal.sources as sources

    from runtime_support import run_cli

    monkeypatch.setattr(sources, "default_candidates", lambda: [])
    scan = write_image(phantom(shape_zyx=(8, 8, 8)), tmp_path / "in" / "s_0000.nii.gz")
    result = run_cli(
        "run",
        scan,
        "--model",
        tmp_path / "no_bundle_needed",
        "--out",
        tmp_path / "out",
        "--require-thermal",
    )
    assert result.exit_code != 0
    assert "no temperature sensor" in result.stderr and "required" in result.stderr
    assert not (tmp_path / "out" / "s.nii.gz").exists()


def test_case_without_sensor_runs_and_leaves_the_missing_sensor_to_the_run(
    tmp_path: Path, caplog
) -> None:
    import logging

    from edgepanc.thermal import sources

    scan = write_image(phantom(shape_zyx=(16, 16, 16)), tmp_path / "in" / "cold_0000.nii.gz")
    config = RunConfig(out_dir=tmp_path, roi=RoiConfig(mode="off"))
    report = run_case(scan, threshold_model(), config, ThermalGuard([]))
    assert report.throttle_events == []
    # said once per run (at INFO, by the discovery), not as a note in every case JSON
    assert not any("thermal protection is off" in note for note in report.notes)
    sources._no_sensor_logged = False
    with caplog.at_level(logging.INFO, logger="edgepanc.thermal.sources"):
        sources.discover_sources(candidates=[], missing_level=logging.INFO)
        sources.discover_sources(candidates=[], missing_level=logging.INFO)
    said = [r for r in caplog.records if "thermal protection is off" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]
