"""`run --backend auto`: timed here among the variants within the accuracy tolerance, cached per
bundle and CPU model; a variant that failed the tolerance runs only when asked for on purpose."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edgepanc.backends import devices, selection
from edgepanc.backends.choice import AutoTiming, ChoiceCache, TileTimer
from edgepanc.backends.selection import choose_backend, failed_variants
from edgepanc.errors import BundleError

PATCH = (8, 16, 16)


def record(file: str, backend: str, precision: str, latency: float, passed: bool | None) -> dict:
    entry = {"file": file, "backend": backend, "precision": precision, "latency_ms": latency}
    if passed is not None:
        entry["within_tolerance"] = passed
    return entry


@pytest.fixture()
def bundle(tmp_path: Path) -> dict:
    """A quantized bundle's description: two passing variants, a failed INT8 one (fastest by
    every measure), and a TensorRT default this CPU machine cannot run."""
    artifacts = {
        "torch_fp32": record("weights.pt", "torch", "fp32", 150.0, True),
        "onnx_fp32": record("model_fp32.onnx", "onnxruntime", "fp32", 50.0, True),
        "openvino_bf16": record("model_fp32.onnx", "openvino", "bf16", 18.0, True),
        "pruned_onnx_int8_minmax": record("pruned_int8.onnx", "onnxruntime", "int8", 2.0, False),
        "tensorrt_fp16": record("model_fp16.engine", "tensorrt", "fp16", 1.0, True)
        | {"device": "cuda"},
    }
    for entry in artifacts.values():
        (tmp_path / entry["file"]).write_bytes(b"")
    description = {
        "root": tmp_path,
        "artifacts": artifacts,
        "default_artifact": "tensorrt_fp16",
        "preprocessing": {"patch_size": list(PATCH)},
    }
    (tmp_path / "model.json").write_text(json.dumps({**description, "root": str(tmp_path)}))
    return description


@pytest.fixture(autouse=True)
def cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU; every CPU backend present; bf16 native, so that the scripted times decide."""
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    monkeypatch.setattr(
        selection, "available_backends", lambda: ["torch", "onnxruntime", "openvino"]
    )
    monkeypatch.setattr(selection, "_openvino_problem", lambda precision, device: None)


class ScriptedTimer:
    """Milliseconds per candidate from a script; remembers what it was asked to time."""

    def __init__(self, times: dict[str, float]) -> None:
        self.times = times
        self.timed: list[str] = []

    def __call__(self, name, load, patch_size) -> float:
        assert tuple(patch_size) == PATCH
        self.timed.append(name)
        return self.times[name]


def timing(timer, tmp_path: Path, cpu: str = "Test CPU, 2 cores") -> AutoTiming:
    return AutoTiming(timer=timer, cache=ChoiceCache(tmp_path / "home" / "choice.json"), cpu=cpu)


FAILED_FASTEST = {"onnx_fp32": 50.0, "openvino_bf16": 20.0, "pruned_onnx_int8_minmax": 1.0}


def test_auto_times_only_passing_variants_and_keeps_the_fastest(bundle, tmp_path, caplog):
    timer = ScriptedTimer(FAILED_FASTEST)
    choice = choose_backend(bundle, timing=timing(timer, tmp_path))
    assert choice.artifact == "openvino_bf16"
    assert (choice.backend, choice.precision) == ("openvino", "bf16")
    # the failed variant is never timed, torch is not timed while something else runs
    assert sorted(timer.timed) == ["onnx_fp32", "openvino_bf16"]
    assert "openvino_bf16 20.0 ms" in choice.reason and "onnx_fp32 50.0 ms" in choice.reason
    assert "Test CPU" in choice.reason and "timed now" in choice.reason


def test_auto_never_takes_a_failed_variant_when_the_default_cannot_run(bundle):
    # No timing: the TensorRT default cannot run on this CPU; the failed INT8 variant has the
    # lowest recorded latency but is skipped.
    choice = choose_backend(bundle)
    assert choice.artifact == "openvino_bf16"
    assert "tensorrt_fp16" in choice.reason
    bundle["default_artifact"] = "pruned_onnx_int8_minmax"  # even as the bundle's default
    assert choose_backend(bundle).artifact == "openvino_bf16"


def test_precision_int8_refuses_a_failed_variant_unless_allowed(bundle, tmp_path, caplog):
    with pytest.raises(BundleError) as refused:
        choose_backend(bundle, precision="int8", timing=timing(ScriptedTimer({}), tmp_path))
    message = str(refused.value)
    assert "pruned_onnx_int8_minmax" in message and "accuracy tolerance" in message
    assert "--allow-failed-variant" in message
    allowed = choose_backend(bundle, precision="int8", allow_failed=True)
    assert allowed.artifact == "pruned_onnx_int8_minmax" and "WARNING" in allowed.reason


def test_allowed_failed_variant_is_logged_as_a_warning(bundle, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(selection, "build_predictor", lambda choice, view: choice)
    with caplog.at_level(logging.INFO, logger="edgepanc.backends"):
        selection.select_predictor(bundle, precision="int8", allow_failed=True, measure=False)
    [line] = [r for r in caplog.records if r.name == "edgepanc.backends"]
    assert line.levelno == logging.WARNING and "failed the accuracy tolerance" in line.getMessage()


def test_an_older_bundle_reports_the_failure_in_quantization_json(bundle, tmp_path):
    for entry in bundle["artifacts"].values():
        del entry["within_tolerance"]
    report = {
        "variants": [
            {"name": "pruned_onnx_int8_minmax", "within_tolerance": False},
            {"name": "onnx_fp32", "within_tolerance": True},
        ]
    }
    (tmp_path / "quantization.json").write_text(json.dumps(report))
    assert failed_variants(bundle) == {"pruned_onnx_int8_minmax"}
    timer = ScriptedTimer(FAILED_FASTEST)
    assert choose_backend(bundle, timing=timing(timer, tmp_path)).artifact == "openvino_bf16"
    assert "pruned_onnx_int8_minmax" not in timer.timed


def test_the_choice_is_cached_per_bundle_and_cpu_model(bundle, tmp_path):
    first = ScriptedTimer(FAILED_FASTEST)
    assert choose_backend(bundle, timing=timing(first, tmp_path)).artifact == "openvino_bf16"
    assert first.timed

    again = ScriptedTimer({})  # any timing now would fail: the cache must answer
    cached = choose_backend(bundle, timing=timing(again, tmp_path))
    assert cached.artifact == "openvino_bf16" and again.timed == []
    assert "cached choice" in cached.reason and "openvino_bf16 20.0 ms" in cached.reason

    other_cpu = ScriptedTimer({"onnx_fp32": 10.0, "openvino_bf16": 30.0})
    moved = choose_backend(bundle, timing=timing(other_cpu, tmp_path, cpu="Other CPU, 4 cores"))
    assert moved.artifact == "onnx_fp32" and sorted(other_cpu.timed) == [
        "onnx_fp32",
        "openvino_bf16",
    ]

    # re-quantized bundle: another model.json, another content id, timed again
    (tmp_path / "model.json").write_text((tmp_path / "model.json").read_text() + "\n")
    requantized = ScriptedTimer({"onnx_fp32": 10.0, "openvino_bf16": 30.0})
    assert choose_backend(bundle, timing=timing(requantized, tmp_path)).artifact == "onnx_fp32"
    assert requantized.timed


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(bundle, tmp_path, caplog):
    cache = tmp_path / "home" / "choice.json"
    cache.parent.mkdir()
    cache.write_text("{not json")
    timer = ScriptedTimer(FAILED_FASTEST)
    with caplog.at_level(logging.WARNING, logger="edgepanc.backends"):
        choice = choose_backend(bundle, timing=timing(timer, tmp_path))
    assert choice.artifact == "openvino_bf16" and timer.timed
    assert any("ignoring the backend choice cache" in r.getMessage() for r in caplog.records)
    written = json.loads(cache.read_text())
    [entry] = written["choices"].values()
    assert entry["artifact"] == "openvino_bf16" and entry["timings_ms"]["onnx_fp32"] == 50.0
    assert not [p for p in cache.parent.iterdir() if p.name != cache.name]  # no temporaries


def test_a_cached_choice_that_is_no_longer_a_candidate_is_timed_again(bundle, tmp_path):
    choose_backend(bundle, timing=timing(ScriptedTimer(FAILED_FASTEST), tmp_path))
    # the cached winner became unrunnable (its file is gone): the others are timed
    (tmp_path / "model_fp32.onnx").unlink()
    bundle["artifacts"]["onnx_int8"] = record("int8.onnx", "onnxruntime", "int8", 9.0, True)
    (tmp_path / "int8.onnx").write_bytes(b"")
    timer = ScriptedTimer({"onnx_int8": 9.0})
    assert choose_backend(bundle, timing=timing(timer, tmp_path)).artifact == "onnx_int8"


def test_tile_timer_times_the_loaded_predictor_on_a_tile():
    calls = []

    def predictor(batch):
        calls.append(batch.shape)
        return batch, batch

    ms = TileTimer(calls=3)("x", lambda: predictor, PATCH)
    assert ms >= 0.0
    assert calls == [(1, 1, *PATCH)] * 4  # one untimed call, then three timed ones


def test_nothing_is_timed_when_one_variant_besides_torch_can_run(bundle, tmp_path):
    (tmp_path / "model_fp32.onnx").unlink()  # ONNX Runtime fp32 and OpenVINO bf16 are gone
    bundle["artifacts"]["onnx_int8"] = record("int8.onnx", "onnxruntime", "int8", 9.0, True)
    (tmp_path / "int8.onnx").write_bytes(b"")
    timer = ScriptedTimer({})
    choice = choose_backend(bundle, timing=timing(timer, tmp_path))
    assert choice.artifact == "onnx_int8" and timer.timed == []
    assert not (tmp_path / "home" / "choice.json").exists()
