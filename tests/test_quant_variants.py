"""Typed variant records: names and files follow from the fields, and the record survives
``model.json`` without anything being parsed back out of an artifact name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgepanc.bundle import load_bundle, save_bundle_metadata, write_bundle
from edgepanc.networks import UNetConfig, build_network
from edgepanc.quantization.report import VariantResult
from edgepanc.quantization.stages.assembly import artifact_record
from edgepanc.quantization.variants import (
    REFERENCE,
    Variant,
    onnx_fp32,
    onnx_int8,
    onnx_int8_qat,
    tensorrt_engine,
    torch_weights,
)

PLAN = {"target_spacing": [2.0, 2.0, 2.0], "patch_size": [16, 16, 16]}

# The artifact names and files of the bundles `edgepanc quantize` has always written.
EXPECTED = [
    (torch_weights(), "torch_fp32", "weights.pt"),
    (onnx_fp32(), "onnx_fp32", "model_fp32.onnx"),
    (onnx_int8("minmax"), "onnx_int8_minmax", "onnx_int8_minmax.onnx"),
    (onnx_int8("percentile"), "onnx_int8_percentile", "onnx_int8_percentile.onnx"),
    (onnx_int8_qat("entropy"), "onnx_int8_qat", "model_int8_qat.onnx"),
    (tensorrt_engine("fp16"), "tensorrt_fp16", "model_fp16.engine"),
    (tensorrt_engine("int8"), "tensorrt_int8", "model_int8.engine"),
    (torch_weights(pruned=True), "pruned_torch_fp32", "pruned.pt"),
    (onnx_fp32(pruned=True), "pruned_onnx_fp32", "pruned_fp32.onnx"),
    (
        onnx_int8("entropy", pruned=True),
        "pruned_onnx_int8_entropy",
        "pruned_onnx_int8_entropy.onnx",
    ),
]
VARIANTS = [variant for variant, _, _ in EXPECTED]


def result_of(variant: Variant) -> VariantResult:
    metrics = {"whole_dsc": 0.9, "lesion_dsc": 0.5, "macro_f1": 0.7, "n_cases": 3}
    return VariantResult(
        variant.name, variant.backend, variant.precision, variant.file, 10, 20, 30, 1.5, metrics
    )


@pytest.mark.parametrize(("variant", "name", "file"), EXPECTED, ids=[n for _, n, _ in EXPECTED])
def test_name_and_file_follow_from_the_fields(variant: Variant, name: str, file: str) -> None:
    assert variant.name == name
    assert variant.file == file
    assert variant.device == ("cuda" if variant.backend == "tensorrt" else "cpu")


def test_the_reference_is_the_source_weights_run_by_torch() -> None:
    assert Variant("weights", "torch", "fp32", "weights.pt") == REFERENCE
    assert REFERENCE.name == "torch_fp32" and not REFERENCE.pruned


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_record_round_trip_through_json(variant: Variant) -> None:
    record = json.loads(json.dumps(variant.to_record()))
    assert Variant.from_record(record) == variant


def test_records_survive_the_bundle_round_trip_without_name_parsing(tmp_path) -> None:
    """Stored under names that say nothing, every variant comes back whole from model.json."""
    folder = tmp_path / "bundle"
    write_bundle(folder, build_network("tiny"), PLAN)
    bundle = load_bundle(folder)
    pruned = UNetConfig(features=(2, 4, 8))
    for index, variant in enumerate(VARIANTS):
        if variant.file != "weights.pt":
            (folder / variant.file).write_bytes(b"artifact")
        bundle.artifacts[f"artifact{index}"] = artifact_record(variant, result_of(variant), pruned)
    save_bundle_metadata(bundle)

    loaded = load_bundle(folder)
    for index, variant in enumerate(VARIANTS):
        record = loaded.artifacts[f"artifact{index}"]
        restored = Variant.from_record(record)
        assert restored == variant
        assert restored.name == variant.name
        assert loaded.artifact_path(f"artifact{index}") == folder / variant.file
        # what was measured and where it runs travel with the record
        assert record["device"] == variant.device and record["latency_ms"] == 1.5
        assert set(record["metrics"]) == {"whole_dsc", "lesion_dsc", "macro_f1"}
        assert ("network" in record) == variant.pruned
        if variant.pruned:
            assert UNetConfig.from_dict(record["network"]) == pruned


def test_a_pruned_record_needs_its_network() -> None:
    variant = onnx_fp32(pruned=True)
    with pytest.raises(ValueError, match="pruned"):
        artifact_record(variant, result_of(variant))


def test_a_record_without_its_kind_is_not_guessed_from_the_name() -> None:
    older = {"file": "onnx_int8_minmax.onnx", "backend": "onnxruntime", "precision": "int8"}
    with pytest.raises(ValueError, match="kind"):
        Variant.from_record(older)


@pytest.mark.parametrize(
    "fields",
    [
        ("ptq", "onnxruntime", "int8", "x.onnx", False, None),  # INT8 ONNX without calibration
        ("onnx", "onnxruntime", "fp32", "x.onnx", False, "minmax"),  # calibration on fp32
        ("weights", "onnxruntime", "fp32", "x.pt", False, None),  # wrong backend for the kind
        ("engine", "tensorrt", "fp32", "x.engine", False, None),  # no fp32 engines
        ("export", "onnxruntime", "fp32", "x.onnx", False, None),  # unknown kind
        ("onnx", "onnxruntime", "fp32", "", False, None),  # no file
    ],
)
def test_inconsistent_fields_are_refused(fields: tuple) -> None:
    with pytest.raises(ValueError):
        Variant(*fields)


def test_variant_records_import_without_torch() -> None:
    code = (
        "import sys; import edgepanc.quantization.variants, edgepanc.quantization.config, "
        "edgepanc.quantization.report; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def tensorrt_context(tmp_path):
    """A context with just what the TensorRT stage reads: config, staging, patch, patches."""
    import numpy as np

    from edgepanc.quantization.config import QuantizeConfig
    from edgepanc.quantization.stages.context import PreparedData, QuantizeContext

    staging = tmp_path / ".out.staging"
    staging.mkdir()
    patches = np.zeros((2, 1, 16, 16, 16), dtype=np.float32)
    data = PreparedData([], [], patches, patches[:, 0].astype(np.int64), np.zeros(2), patches)
    config = QuantizeConfig(model=tmp_path / "m", data=tmp_path / "d", out=tmp_path / "out")
    return QuantizeContext(config, None, None, (16, 16, 16), "cpu", staging, data)


def test_tensorrt_stage_builds_and_measures_both_engines(tmp_path, monkeypatch) -> None:
    """The GPU-only stage on a CPU: engines faked, the typed variants and files checked."""
    from edgepanc.quantization.stages import tensorrt as stage

    built, measured = [], []

    def build_engine(onnx_path, engine_path, patch_size, precision):
        assert onnx_path.is_file()
        built.append((onnx_path.name, engine_path.name, precision))
        engine_path.write_bytes(b"engine")

    def quantize_int8(fp32, out, patches, method, activation_type, symmetric_activations):
        assert (method, activation_type, symmetric_activations) == ("entropy", "qint8", True)
        out.write_bytes(b"qdq")

    monkeypatch.setattr(stage, "tensorrt_skip_reason", lambda: None)
    monkeypatch.setattr(stage, "build_engine", build_engine)
    monkeypatch.setattr(stage, "quantize_int8", quantize_int8)
    monkeypatch.setattr(stage, "measure", lambda ctx, variant, model: measured.append(variant))
    ctx = tensorrt_context(tmp_path)
    fp32_onnx = ctx.staging / "model_fp32.onnx"
    fp32_onnx.write_bytes(b"fp32")
    stage.build_engines(ctx, fp32_onnx, model=None, method="entropy")

    assert measured == [tensorrt_engine("fp16"), tensorrt_engine("int8")]
    assert [(v.name, v.device) for v in measured] == [
        ("tensorrt_fp16", "cuda"),
        ("tensorrt_int8", "cuda"),
    ]
    assert built[0] == ("model_fp32.onnx", "model_fp16.engine", "fp16")
    assert built[1][1:] == ("model_int8.engine", "int8")
    assert sorted(p.name for p in ctx.staging.iterdir()) == [
        "model_fp16.engine",
        "model_fp32.onnx",
        "model_int8.engine",
    ]
    assert [p.name for p in tmp_path.iterdir()] == [".out.staging"]  # the symmetric copy is gone


def test_tensorrt_stage_is_skipped_with_a_note(tmp_path, monkeypatch) -> None:
    from edgepanc.quantization.stages import tensorrt as stage

    monkeypatch.setattr(stage, "tensorrt_skip_reason", lambda: "no CUDA device")
    ctx = tensorrt_context(tmp_path)
    stage.build_engines(ctx, ctx.staging / "model_fp32.onnx", model=None, method="minmax")
    assert ctx.notes == ["skipped TensorRT: no CUDA device"] and not ctx.measured
    assert not list(ctx.staging.iterdir())
