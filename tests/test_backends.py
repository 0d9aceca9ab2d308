"""Backends: torch fp32/bf16, ONNX Runtime against torch, TensorRT absence, bundle selection."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepanc.backends import devices, selection
from edgepanc.backends.base import BackendUnavailable, Predictor
from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor
from edgepanc.backends.selection import available_backends, choose_backend, select_predictor
from edgepanc.backends.tensorrt_backend import TensorRTPredictor
from edgepanc.backends.torch_backend import TorchPredictor
from edgepanc.errors import BundleError, InputError
from edgepanc.inferers.sliding_window import sliding_window_inference
from edgepanc.networks import build_network
from edgepanc.postprocessing.subtype import classify_from_tiles

PATCH = (16, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("tiny").eval()


def export_tiny(model: torch.nn.Module, path: Path) -> Path:
    """Export as the compression stage does: input 'image', two named outputs, dynamic batch."""
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and instance-norm notes
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, *PATCH),),
            str(path),
            input_names=["image"],
            output_names=["seg_logits", "cls_logits"],
            dynamic_axes={"image": batch, "seg_logits": batch, "cls_logits": batch},
            opset_version=17,
            dynamo=False,  # torch 2.13 defaults to the dynamo exporter, which needs onnxscript
        )
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model, tmp_path_factory) -> Path:
    return export_tiny(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def phantom(shape=(32, 40, 36), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    organ = sum((g / 0.6) ** 2 for g in grid) < 1
    lesion = sum(((g - 0.15) / 0.25) ** 2 for g in grid) < 1
    return (-1.0 + 1.5 * organ + lesion + 0.3 * rng.standard_normal(shape)).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    a, b = a == label, b == label
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def test_torch_fp32_matches_the_model_and_restores_training_mode(tiny_model):
    predictor = TorchPredictor(tiny_model, device="cpu", precision="fp32")
    assert isinstance(predictor, Predictor)
    batch = np.random.default_rng(0).standard_normal((2, 1, *PATCH)).astype(np.float32)
    tiny_model.train()
    seg, cls = predictor(batch)
    assert tiny_model.training  # the caller's mode survives a validation pass
    tiny_model.eval()
    with torch.no_grad():
        ref_seg, ref_cls = tiny_model(torch.from_numpy(batch))
    assert seg.dtype == np.float32 and seg.shape == (2, 3, *PATCH) and cls.shape == (2, 3)
    np.testing.assert_allclose(seg, ref_seg.numpy(), atol=1e-5)
    np.testing.assert_allclose(cls, ref_cls.numpy(), atol=1e-5)


def test_torch_bf16_is_close_to_fp32(tiny_model):
    batch = phantom(PATCH)[None, None]
    seg32, cls32 = TorchPredictor(tiny_model, precision="fp32")(batch)
    seg16, cls16 = TorchPredictor(tiny_model, precision="bf16")(batch)
    assert seg16.dtype == np.float32  # always handed back as float32
    assert not np.array_equal(seg16, seg32)  # it really ran in bf16
    scale = np.abs(seg32).max()
    assert np.abs(seg16 - seg32).max() < 0.1 * scale
    assert (seg16.argmax(1) == seg32.argmax(1)).mean() > 0.95
    np.testing.assert_allclose(cls16, cls32, atol=0.1 * np.abs(cls32).max() + 0.05)


def test_torch_rejects_unknown_precision(tiny_model):
    with pytest.raises(ValueError, match="precision"):
        TorchPredictor(tiny_model, precision="int4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_torch_cuda_without_gpu_is_unavailable(tiny_model):
    with pytest.raises(BackendUnavailable, match="CUDA"):
        TorchPredictor(tiny_model, device="cuda")


def test_onnxruntime_matches_torch_on_a_phantom(tiny_model, tiny_onnx):
    volume = phantom()
    onnx = OnnxRuntimePredictor(tiny_onnx, intra_op_threads=1)
    assert (onnx.name, onnx.device, onnx.precision) == ("onnxruntime", "cpu", "fp32")
    reference = sliding_window_inference(
        volume, TorchPredictor(tiny_model), PATCH, 0.5, 2, keep_probabilities=True
    )
    result = sliding_window_inference(volume, onnx, PATCH, 0.5, 2, keep_probabilities=True)
    present = np.unique(reference.labels)
    assert len(present) > 1
    for label in present:
        assert dice(result.labels, reference.labels, label) >= 0.99
    np.testing.assert_allclose(result.tile_cls_logits, reference.tile_cls_logits, atol=1e-3)
    ours = classify_from_tiles(result, result.labels, result.probabilities)
    assert (
        ours.argmax()
        == classify_from_tiles(reference, reference.labels, reference.probabilities).argmax()
    )


def test_onnxruntime_reports_a_missing_or_broken_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        OnnxRuntimePredictor(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match="broken.onnx: ONNX Runtime cannot load"):
        OnnxRuntimePredictor(broken)


def test_onnxruntime_checks_io_names(tmp_path):
    class Plain(torch.nn.Module):
        def forward(self, x):
            return x * 2, x.mean(dim=(2, 3, 4))

    path = tmp_path / "names.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Plain(),
            (torch.zeros(1, 1, 4, 4, 4),),
            str(path),
            input_names=["x"],
            output_names=["a", "b"],
            opset_version=17,
            dynamo=False,
        )
    with pytest.raises(InputError, match="expected input 'image'"):
        OnnxRuntimePredictor(path)


def test_tensorrt_without_torch_tensorrt_raises_a_clear_error(tmp_path, monkeypatch):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0")
    if importlib.util.find_spec("torch_tensorrt") is not None:
        # simulate a machine without it; the real package is exercised on GPU machines
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "torch_tensorrt" else real_find_spec(name, *a),
        )
    with pytest.raises(BackendUnavailable, match="torch_tensorrt is not installed"):
        TensorRTPredictor(engine)
    assert "tensorrt" not in available_backends()


# --- selection on a fake bundle -------------------------------------------------------------


@pytest.fixture()
def fake_bundle(tiny_model, tiny_onnx, tmp_path) -> dict:
    torch.save(tiny_model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "model_fp32.onnx").write_bytes(tiny_onnx.read_bytes())
    (tmp_path / "model.engine").write_bytes(b"\0")
    return {
        "root": tmp_path,
        "network": tiny_model.config.to_dict(),
        "artifacts": {
            "onnx_fp32": {
                "file": "model_fp32.onnx",
                "backend": "onnxruntime",
                "precision": "fp32",
                "latency_ms": 12.0,
            },
            "onnx_int8": {
                "file": "model_int8.onnx",
                "backend": "onnxruntime",
                "precision": "int8",
                "latency_ms": 5.0,
            },
            "trt_fp16": {
                "file": "model.engine",
                "backend": "tensorrt",
                "precision": "fp16",
                "device": "cuda",
                "latency_ms": 1.0,
            },
        },
        "default_artifact": "trt_fp16",
    }


@pytest.fixture()
def cpu_only(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    monkeypatch.setattr(selection, "available_backends", lambda: ["torch", "onnxruntime"])


def test_auto_falls_back_to_fastest_runnable_artifact(fake_bundle, cpu_only, caplog):
    # the TensorRT default needs a GPU and the INT8 file is missing: the fp32 ONNX is left
    with caplog.at_level(logging.INFO, logger="edgepanc.backends"):
        predictor = select_predictor(fake_bundle)
    assert (predictor.name, predictor.precision, predictor.device) == ("onnxruntime", "fp32", "cpu")
    assert predictor.artifact == "onnx_fp32"
    [line] = [r.getMessage() for r in caplog.records if r.name == "edgepanc.backends"]
    assert "onnx_fp32" in line and "12 ms" in line and "trt_fp16" in line


def test_auto_prefers_the_bundle_default_when_runnable(fake_bundle, cpu_only):
    (fake_bundle["root"] / "model_int8.onnx").write_bytes(b"")
    fake_bundle["default_artifact"] = "onnx_fp32"
    choice = choose_backend(fake_bundle)
    assert choice.artifact == "onnx_fp32" and "default" in choice.reason
    fake_bundle["default_artifact"] = None
    assert choose_backend(fake_bundle).artifact == "onnx_int8"  # now present, and fastest


def test_untouched_bundle_runs_torch_fp32_weights(fake_bundle, cpu_only):
    fake_bundle["artifacts"] = {}
    fake_bundle["default_artifact"] = None
    predictor = select_predictor(fake_bundle)
    assert (predictor.name, predictor.precision, predictor.artifact) == ("torch", "fp32", None)
    seg, cls = predictor(phantom(PATCH)[None, None])
    assert seg.shape == (1, 3, *PATCH) and cls.shape == (1, 3)


def test_explicit_requests(fake_bundle, cpu_only):
    torch_bf16 = choose_backend(fake_bundle, backend="torch", precision="bf16")
    assert (torch_bf16.backend, torch_bf16.precision, torch_bf16.artifact) == (
        "torch",
        "bf16",
        None,
    )
    with pytest.raises(BundleError, match="onnx_int8: file model_int8.onnx is missing"):
        choose_backend(fake_bundle, backend="onnxruntime", precision="int8")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        choose_backend(fake_bundle, backend="tensorrt")
    with pytest.raises(BundleError, match="torch fp16 is not offered on cpu"):
        choose_backend(fake_bundle, backend="torch", precision="fp16")
    with pytest.raises(ValueError, match="backend"):
        choose_backend(fake_bundle, backend="tflite")


def test_device_resolution_lives_in_one_place(monkeypatch):
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    assert devices.resolve_device("auto") == devices.torch_device("auto") == "cpu"
    assert devices.resolve_device("cuda") == "cuda"  # ONNX Runtime's CUDA provider decides
    with pytest.raises(BackendUnavailable, match="CUDA"):
        devices.torch_device("cuda")
    with pytest.raises(ValueError, match="device"):
        devices.resolve_device("gpu")
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    assert devices.resolve_device("auto") == devices.torch_device("cuda") == "cuda"


def test_cuda_available_asks_torch_once_torch_is_loaded(monkeypatch):
    # NVML only spares a torch import; with torch loaded (training, the compression stage) its
    # own answer counts, even where NVML is missing or blind.
    monkeypatch.setattr(devices, "nvidia_gpu_present", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.cuda_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not devices.cuda_available()


def test_available_backends_on_this_machine():
    names = available_backends()
    assert names[0] == "torch"
    assert ("onnxruntime" in names) == (importlib.util.find_spec("onnxruntime") is not None)


def test_runtime_on_an_onnx_bundle_does_not_import_torch(tiny_model, tmp_path):
    """torch is about 260 MB of resident memory that an ONNX Runtime run has no use for."""
    from edgepanc.backends.devices import nvidia_gpu_present
    from edgepanc.bundle import load_bundle, save_bundle_metadata, write_bundle

    from runtime_support import TINY_PLAN

    folder = tmp_path / "bundle"
    write_bundle(folder, tiny_model, TINY_PLAN.to_dict())
    export_tiny(tiny_model, folder / "model_fp32.onnx")
    bundle = load_bundle(folder)
    bundle.add_artifact("onnx_fp32", "model_fp32.onnx", "onnxruntime", "fp32", make_default=True)
    save_bundle_metadata(bundle)
    code = (
        "import sys; from pathlib import Path; from edgepanc.runtime.model import load_model; "
        f"m = load_model(Path({str(folder)!r}), 'auto', 'auto', 'auto'); "
        "print(m.predictor.name, m.activation_bytes_per_voxel > 0, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    name, footprint, torch_loaded = out.stdout.split()[-3:]
    assert (name, footprint) == ("onnxruntime", "True"), out.stdout
    # where NVML finds a GPU, torch is asked whether CUDA works; elsewhere it is never loaded
    assert torch_loaded == str(nvidia_gpu_present())
