"""What a person gets from ``edgepanc run``: a line per case, statistics.csv, no subtype without a
lesion, the preview and overview, the model named (and warned about), and no folder on failure."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import SimpleITK as sitk

from edgepanc.runtime.outputs import plan_outputs
from edgepanc.runtime.pipeline import RunConfig, run_cases
from edgepanc.runtime.report import case_line
from edgepanc.runtime.roi import RoiConfig
from edgepanc.synth.marker import (
    dataset_provenance,
    is_phantom_scan,
    mark_phantom,
    trained_on,
)
from edgepanc.thermal import ThermalGuard

from runtime_support import make_tiny_bundle, phantom, run_cli, threshold_model, write_image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _threshold_run(tmp_path: Path, preview: bool = False):
    """Two phantoms, one with a bright lesion and one without, through the deterministic
    threshold predictor."""
    folder = tmp_path / "in"
    with_lesion = write_image(phantom(), folder / "lesion_0000.nii.gz")
    without = write_image(phantom(with_lesion=False), folder / "plain_0000.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    model = threshold_model()
    config = RunConfig(out_dir=out, roi=RoiConfig(mode="off"), preview=preview)
    plan = plan_outputs([with_lesion, without], out, None, kinds=config.kinds)
    lines: list[str] = []
    outcome = run_cases(
        plan, model, config, ThermalGuard([]), on_case=lambda r: lines.append(case_line(r))
    )
    assert not outcome.failures, outcome.failures
    return out, lines


def test_statistics_csv_and_case_json_measure_each_case(tmp_path: Path) -> None:
    out, lines = _threshold_run(tmp_path)
    lesion = json.loads((out / "lesion.json").read_text())
    plain = json.loads((out / "plain.json").read_text())
    assert lesion["lesion_found"] is True and lesion["lesion_volume_ml"] > 0
    # the phantom's lesion spans 8 voxels of 2 mm along x: about 16 mm, give or take the 4 mm grid
    assert 8.0 <= lesion["lesion_diameter_mm"] <= 26.0
    assert 200 <= lesion["lesion_mean_hu"] <= 260  # the lesion is 250 HU, its rim partial
    assert 90 <= lesion["pancreas_mean_hu"] < lesion["lesion_mean_hu"]
    assert lesion["subtype"] == lesion["submission_subtype"] == 1
    rows = {row["name"]: row for row in _rows(out / "statistics.csv")}
    assert list(rows) == ["lesion.nii.gz", "plain.nii.gz"]
    row = rows["lesion.nii.gz"]
    assert float(row["pancreas_ml"]) == pytest.approx(lesion["pancreas_volume_ml"])
    assert float(row["lesion_diameter_mm"]) == pytest.approx(lesion["lesion_diameter_mm"])
    assert float(row["lesion_mean_hu"]) == pytest.approx(lesion["lesion_mean_hu"])
    assert row["lesion_found"] == "true" and row["subtype"] == "1"
    probabilities = [float(row[f"p_subtype{k}"]) for k in range(3)]
    assert probabilities == pytest.approx(lesion["probabilities"])
    assert rows["plain.nii.gz"]["lesion_found"] == "false"
    assert (
        rows["plain.nii.gz"]["lesion_diameter_mm"] == "" and rows["plain.nii.gz"]["subtype"] == ""
    )
    assert plain["pancreas_mean_hu"] == pytest.approx(100, abs=15)
    # the console: one line per case with its result
    assert lines[0].startswith("lesion.nii.gz  pancreas ") and " ml, " in lines[0]
    assert "subtype 1 (p " in lines[0]
    assert lines[1].startswith("plain.nii.gz") and "lesion none" in lines[1]
    assert lines[1].endswith("subtype -")


def test_no_lesion_no_subtype_but_the_submission_row_stays(tmp_path: Path) -> None:
    out, _ = _threshold_run(tmp_path)
    plain = json.loads((out / "plain.json").read_text())
    assert plain["lesion_found"] is False and plain["lesion_volume_ml"] == 0
    assert plain["subtype"] is None
    assert len(plain["probabilities"]) == 3 and sum(plain["probabilities"]) == pytest.approx(1)
    argmax = max(range(3), key=lambda k: plain["probabilities"][k])
    assert plain["submission_subtype"] == argmax
    rows = (out / "subtype_results.csv").read_text().splitlines()
    assert rows[0] == "Names,Subtype" and f"plain.nii.gz,{argmax}" in rows


def test_preview_and_overview_by_default_and_not_with_no_preview(
    tmp_path: Path, bundle: Path
) -> None:
    from PIL import Image

    folder = tmp_path / "in"
    for name in ("a", "b"):
        write_image(phantom(shape_zyx=(20, 24, 28)), folder / f"{name}_0000.nii.gz")
    out = tmp_path / "out"
    result = run_cli("run", folder, "--model", bundle, "--out", out)
    assert result.exit_code == 0, result.stderr
    for name in ("a", "b"):
        with Image.open(out / f"{name}_preview.png") as image:
            assert image.info["dpi"] == pytest.approx((150, 150), abs=0.5)
        record = json.loads((out / f"{name}.json").read_text())
        assert record["preview_sha256"]
    with Image.open(out / "overview.png") as image:
        assert image.text["edgepanc-output"] == "overview.png"
        assert image.size[1] > 2 * 100  # a row per case
    quiet = tmp_path / "quiet"
    result = run_cli("run", folder, "--model", bundle, "--out", quiet, "--no-preview")
    assert result.exit_code == 0, result.stderr
    assert not list(quiet.glob("*.png"))


def test_preview_shows_the_abdominal_window(tmp_path: Path) -> None:
    """Soft tissue (100 HU) is mid-grey in W400/L40, air black: the window is HU, not percentiles."""
    import numpy as np

    from edgepanc.runtime.preview import WINDOW_HU, cut_panels

    hu = np.full((8, 8, 8), -1000.0, dtype=np.float32)
    hu[2:6, 2:6, 2:6] = 100.0
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    panels = cut_panels(hu, labels, (1.0, 1.0, 1.0))
    assert [p.view for p in panels] == ["axial", "coronal", "sagittal"]
    assert WINDOW_HU == (-160.0, 240.0)
    assert panels[0].hu.max() == 100.0 and panels[0].hu.min() == -1000.0


def test_case_json_and_console_name_the_model(tmp_path: Path, bundle: Path) -> None:
    scan = write_image(phantom(shape_zyx=(20, 24, 28)), tmp_path / "ct_0000.nii.gz")
    result = run_cli("run", scan, "--model", bundle, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    model = json.loads((tmp_path / "out" / "ct.json").read_text())["model"]
    assert model["path"] == str(bundle.absolute()) and len(model["id"]) == 64
    assert model["run_with_edgepanc"] and "trained_on" in model
    assert f"model: {bundle.absolute()} (id {model['id'][:12]}" in result.stdout
    assert result.stdout.splitlines()[1].startswith("ct.nii.gz  pancreas ")


def _synthetic_bundle(folder: Path) -> Path:
    make_tiny_bundle(folder)
    metadata = json.loads((folder / "model.json").read_text())
    metadata["provenance"] = {"data": {"path": "/data", "synthetic": True}}
    (folder / "model.json").write_text(json.dumps(metadata))
    return folder


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_phantom_model_on_a_real_scan_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _synthetic_bundle(tmp_path / "demo")
    folder = tmp_path / "in"
    for name in ("a", "b"):
        write_image(phantom(shape_zyx=(20, 24, 28)), folder / f"{name}_0000.nii.gz")
    result = run_cli("run", folder, "--model", model, "--out", tmp_path / "out", "--no-preview")
    assert result.exit_code == 0, result.stderr
    assert _warnings(caplog).count("mean nothing on real CT") == 1
    assert "2 of 2 scans" in _warnings(caplog)
    assert "trained on synthetic phantoms from /data" in result.stdout
    # the same model on phantoms edgepanc synth marked: no warning
    marked = tmp_path / "marked"
    write_image(mark_phantom(phantom(shape_zyx=(20, 24, 28))), marked / "p_0000.nii.gz")
    assert is_phantom_scan(marked / "p_0000.nii.gz")
    caplog.clear()
    result = run_cli("run", marked, "--model", model, "--out", tmp_path / "out2", "--no-preview")
    assert result.exit_code == 0, result.stderr
    assert "mean nothing" not in _warnings(caplog)


def test_run_without_model_names_the_bundle_and_warns_about_a_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("EDGEPANC_HOME", str(home))
    demo = _synthetic_bundle(home / "bundles" / "demo")
    scan = write_image(phantom(shape_zyx=(20, 24, 28)), tmp_path / "ct_0000.nii.gz")
    result = run_cli("run", scan, "--out", tmp_path / "out", "--no-preview")
    assert result.exit_code == 0, result.stderr
    assert f"model: {demo.absolute()}" in result.stdout
    assert "no --model given" in _warnings(caplog)
    assert "demo trained on synthetic phantoms" in _warnings(caplog)


def test_synth_marks_its_scans_and_data_set_and_training_reads_it(tmp_path: Path) -> None:
    from edgepanc.synth import SynthConfig, synthesize

    synthesize(SynthConfig(out=tmp_path / "data", cases=1, progress=False))
    scans = sorted((tmp_path / "data").rglob("*_0000.nii.gz"))
    assert scans and all(is_phantom_scan(scan) for scan in scans)
    assert json.loads((tmp_path / "data" / "synth.json").read_text())["synthetic"] is True
    record = dataset_provenance(tmp_path / "data")
    assert record["synthetic"] is True and record["generator"].startswith("edgepanc")
    assert dataset_provenance(tmp_path)["synthetic"] is False
    # a quantized bundle keeps its source's record under source_provenance
    assert trained_on({"source_provenance": {"data": record}}) == record
    assert trained_on({"training": {"data": "x"}}) is None
    # a scan that did not come from synth
    plain = write_image(phantom(shape_zyx=(8, 8, 8)), tmp_path / "plain.nii.gz")
    assert not is_phantom_scan(plain)


def test_training_records_its_data_in_the_bundle(tmp_path: Path) -> None:
    """The bundle's provenance names the data it was trained on (training's own writer)."""
    from types import SimpleNamespace

    from edgepanc.networks import build_network
    from edgepanc.synth import SynthConfig, synthesize
    from edgepanc.training.outputs import write_run_bundle

    from runtime_support import TINY_PLAN

    synthesize(SynthConfig(out=tmp_path / "data", cases=1, progress=False))
    config = SimpleNamespace(data=str(tmp_path / "data"), to_dict=lambda: {"data": "x"})
    state = SimpleNamespace(best_metrics={}, best_epoch=0)
    write_run_bundle(tmp_path / "run", build_network("tiny"), TINY_PLAN, state, config)
    provenance = json.loads((tmp_path / "run" / "model.json").read_text())["provenance"]
    assert trained_on(provenance)["synthetic"] is True


def test_no_output_folder_when_nothing_was_written(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = write_image(phantom(shape_zyx=(20, 24, 28)), tmp_path / "ct_0000.nii.gz")
    monkeypatch.setenv("EDGEPANC_HOME", str(tmp_path / "empty_home"))
    out = tmp_path / "new" / "out"
    result = run_cli("run", scan, "--out", out)  # no bundle anywhere
    assert result.exit_code == 2 and "no model bundle found" in result.stderr
    assert not (tmp_path / "new").exists()
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--memory-budget", "1MB")
    assert result.exit_code != 0 and "error:" in result.stderr
    assert not (tmp_path / "new").exists()
    folder = tmp_path / "in"
    for name in ("a", "b"):
        write_image(phantom(shape_zyx=(20, 24, 28)), folder / f"{name}_0000.nii.gz")
    result = run_cli("run", folder, "--model", bundle, "--out", out, "--memory-budget", "1MB")
    assert result.exit_code == 1 and "failed            2" in result.stdout
    assert not (tmp_path / "new").exists()


def test_missing_sensor_is_said_once_at_info_not_in_case_json(
    tmp_path: Path, bundle: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgepanc.thermal import sources

    monkeypatch.setattr(sources, "default_candidates", lambda: [])
    monkeypatch.setattr(sources, "_no_sensor_logged", False)
    folder = tmp_path / "in"
    for name in ("a", "b"):
        write_image(phantom(shape_zyx=(20, 24, 28)), folder / f"{name}_0000.nii.gz")
    with caplog.at_level(logging.INFO):
        result = run_cli(
            "run", folder, "--model", bundle, "--out", tmp_path / "out", "--no-preview"
        )
    assert result.exit_code == 0, result.stderr
    said = [r for r in caplog.records if "no temperature sensor" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]
    for name in ("a", "b"):
        notes = json.loads((tmp_path / "out" / f"{name}.json").read_text())["notes"]
        assert not any("temperature" in note for note in notes)


def test_a_mask_written_is_what_the_json_measures(tmp_path: Path) -> None:
    out, _ = _threshold_run(tmp_path)
    mask = sitk.ReadImage(str(out / "lesion.nii.gz"))
    view = sitk.GetArrayViewFromImage(mask)
    voxel_ml = float(mask.GetSpacing()[0] * mask.GetSpacing()[1] * mask.GetSpacing()[2]) / 1000
    record = json.loads((out / "lesion.json").read_text())
    assert record["lesion_volume_ml"] == pytest.approx((view == 2).sum() * voxel_ml, abs=1e-3)


def test_a_phantom_dicom_series_keeps_the_phantom_note(tmp_path: Path) -> None:
    from edgepanc.io.volume import write_dicom_series

    image = phantom(shape_zyx=(6, 8, 8), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_dicom_series(mark_phantom(image), tmp_path / "marked")
    write_dicom_series(
        phantom(shape_zyx=(6, 8, 8), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)), tmp_path / "plain"
    )
    assert is_phantom_scan(tmp_path / "marked")  # Image Comments (0020,4000) carry it
    assert not is_phantom_scan(tmp_path / "plain")
