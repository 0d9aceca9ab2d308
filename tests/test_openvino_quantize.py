"""`edgepanc quantize` builds the OpenVINO variants, scores them like every other variant, and
`edgepanc run` picks among the passing ones by timing them on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepanc.backends.openvino_backend import machine_cpu_flags, native_bf16_problem
from edgepanc.bundle import load_bundle
from edgepanc.cli import main
from edgepanc.quantization.variants import Variant

from train_support import train_tiny_bundle

pytest.importorskip("openvino")
pytest.importorskip("nncf")

PATCH = (16, 16, 16)
NATIVE_BF16 = native_bf16_problem(machine_cpu_flags()) is None


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ovq")
    data, run = train_tiny_bundle(root, PATCH)
    out = root / "bundle"
    args = [
        "quantize",
        "--model", run,
        "--data", data,
        "--out", out,
        "--int8", "ptq",
        "--export", "onnx,int8,openvino",
        "--calibration-cases", "3",
        "--calibration-method", "minmax",
        "--latency-runs", "1",
        "--max-validation-cases", "1",
        "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(main, list(map(str, args)))
    return {"result": result, "out": out, "data": data}


def test_quantize_measures_the_openvino_variants(quantized: dict) -> None:
    assert quantized["result"].exit_code == 0, quantized["result"].output
    bundle = load_bundle(quantized["out"])
    report = json.loads((bundle.path / "quantization.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    expected = {"openvino_int8"} | ({"openvino_bf16"} if NATIVE_BF16 else set())
    assert expected <= set(bundle.artifacts) and expected <= set(by_name)
    int8 = Variant.from_record(bundle.artifacts["openvino_int8"])
    assert (int8.kind, int8.backend, int8.precision) == ("nncf", "openvino", "int8")
    assert (bundle.path / int8.file).is_file() and (bundle.path / int8.file).suffix == ".xml"
    assert (bundle.path / int8.file).with_suffix(".bin").is_file()
    for name in expected:
        record = bundle.artifacts[name]
        # scored against fp32 like every variant, its verdict written for the runtime
        assert set(record["metrics"]) == {"whole_dsc", "lesion_dsc", "macro_f1"}
        assert record["within_tolerance"] == by_name[name]["within_tolerance"]
        assert isinstance(record["within_tolerance"], bool) and record["latency_ms"] > 0
    if NATIVE_BF16:
        bf16 = Variant.from_record(bundle.artifacts["openvino_bf16"])
        # bf16 has no file of its own: it is the fp32 export computed in bf16
        assert bf16.file == bundle.artifacts["onnx_fp32"]["file"] and not bf16.owns_file
    else:
        assert "no OpenVINO bf16 variant" in (bundle.path / "quantization.md").read_text()
    table = (bundle.path / "quantization.md").read_text()
    assert "| openvino_int8" in table
    assert (bundle.path / "quantization.png").stat().st_size > 0


def test_openvino_int8_agrees_with_fp32(quantized: dict) -> None:
    from edgepanc.backends.openvino_backend import OpenVinoPredictor

    bundle = load_bundle(quantized["out"])
    plan = bundle.plan
    hu = np.random.default_rng(0).uniform(plan.clip_low, plan.clip_high, (2, 1, *PATCH))
    patches = ((hu - plan.mean) / plan.std).astype(np.float32)
    fp32 = OpenVinoPredictor(bundle.artifact_path("onnx_fp32"), "fp32")(patches)[0]
    int8 = OpenVinoPredictor(bundle.artifact_path("openvino_int8"), "int8")(patches)[0]
    assert int8.shape == fp32.shape
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.9


def test_run_auto_times_the_passing_variants_and_caches_the_choice(
    quantized: dict, tmp_path: Path
) -> None:
    import logging

    from edgepanc.backends.choice import default_cache_path

    bundle = quantized["out"]
    scan = next((quantized["data"] / "imagesTs").glob("*.nii.gz"), None) or next(
        quantized["data"].rglob("*_0000.nii.gz")
    )
    records = load_bundle(bundle).artifacts
    passing = {n for n, r in records.items() if r["within_tolerance"] and r["backend"] != "torch"}
    logger = logging.getLogger("edgepanc.backends")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        for attempt in ("first", "second"):
            result = CliRunner().invoke(
                main, ["run", str(scan), "--model", str(bundle), "--out", str(tmp_path / attempt)]
            )
            assert result.exit_code == 0, result.output
    finally:
        logger.removeHandler(handler)
    first, second = [line for line in lines if line.startswith("backend: ")]
    assert "timed now" in first and "cached choice" in second
    cache = json.loads(default_cache_path().read_text())
    [entry] = cache["choices"].values()
    assert set(entry["timings_ms"]) == passing  # exactly the passing variants were timed
    assert entry["artifact"] == min(entry["timings_ms"], key=entry["timings_ms"].get)
    assert f"artifact {entry['artifact']!r}" in first


def test_run_refuses_a_failed_variant_unless_allowed_on_purpose(
    quantized: dict, tmp_path: Path
) -> None:
    """Every INT8 variant marked outside the tolerance: --precision int8 stops with one line and
    writes nothing; --allow-failed-variant runs one with a warning naming the failure."""
    import logging
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(quantized["out"], bundle)
    metadata = json.loads((bundle / "model.json").read_text())
    for record in metadata["artifacts"].values():
        if record["precision"] == "int8":
            record["within_tolerance"] = False
    (bundle / "model.json").write_text(json.dumps(metadata))
    scan = next(quantized["data"].rglob("*_0000.nii.gz"))
    refused = CliRunner().invoke(
        main, ["run", str(scan), "--model", str(bundle), "--precision", "int8",
               "--out", str(tmp_path / "refused")],
    )  # fmt: skip
    assert refused.exit_code == 2, refused.output
    [line] = [x for x in refused.output.splitlines() if x.startswith("error:")]
    assert "failed the accuracy tolerance" in line and "--allow-failed-variant" in line
    assert not (tmp_path / "refused").exists()

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("edgepanc.backends").addHandler(handler)
    try:
        allowed = CliRunner().invoke(
            main, ["run", str(scan), "--model", str(bundle), "--precision", "int8",
                   "--allow-failed-variant", "--out", str(tmp_path / "allowed")],
        )  # fmt: skip
    finally:
        logging.getLogger("edgepanc.backends").removeHandler(handler)
    assert allowed.exit_code == 0, allowed.output
    [choice] = [r for r in records if r.getMessage().startswith("backend: ")]
    assert choice.levelno == logging.WARNING and "int8" in choice.getMessage()
    assert "failed the accuracy tolerance" in choice.getMessage()
    assert any((tmp_path / "allowed").rglob("*.nii.gz"))
