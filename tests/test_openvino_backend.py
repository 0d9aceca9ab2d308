"""OpenVINO backend: fp32 against ONNX Runtime, bf16 only where native, NNCF INT8, no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepanc.backends.base import BackendUnavailable, Predictor
from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor
from edgepanc.backends.openvino_backend import (
    OpenVinoPredictor,
    OpenVinoSettings,
    compile_config,
    describe_settings,
    layer_precisions,
    machine_cpu_flags,
    model_cache_dir,
    native_bf16_problem,
    usable_cores,
)
from edgepanc.errors import InputError
from edgepanc.networks import build_network
from edgepanc.quantization.onnx_export import export_onnx
from edgepanc.quantization.openvino_int8 import (
    OpenVinoInt8Config,
    calibration_batches,
    quantize_openvino_int8,
)

PATCH = (16, 16, 16)
NO_BF16 = frozenset({"avx2", "fma", "avx512f", "avx512_vnni"})
AMX = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"})
MACHINE_HAS_BF16 = native_bf16_problem(machine_cpu_flags()) is None


def phantom_batch(n: int, seed: int) -> np.ndarray:
    """Normalised CT-like patches: an organ-like blob, a brighter lesion, noise."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in PATCH], indexing="ij")
    batch = []
    for _ in range(n):
        shift = rng.uniform(-0.3, 0.3, size=3)
        organ = sum(((g - s) / 0.6) ** 2 for g, s in zip(grid, shift, strict=True)) < 1
        lesion = sum(((g - s - 0.1) / 0.25) ** 2 for g, s in zip(grid, shift, strict=True)) < 1
        image = -1.0 + 1.5 * organ + lesion + 0.3 * rng.standard_normal(PATCH)
        batch.append(image[None].astype(np.float32))
    return np.stack(batch)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_network("tiny").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and instance-norm notes
        return export_onnx(model, tmp_path_factory.mktemp("ov") / "tiny.onnx", PATCH)


@pytest.fixture(scope="module")
def reference(tiny_onnx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch = phantom_batch(3, seed=1)
    seg, cls = OnnxRuntimePredictor(tiny_onnx, intra_op_threads=1)(batch)
    return batch, seg, cls


@pytest.fixture(scope="module")
def tiny_int8(tiny_onnx) -> Path:
    out = tiny_onnx.parent / "int8" / "tiny_int8.xml"
    out.parent.mkdir()
    return quantize_openvino_int8(
        tiny_onnx, out, phantom_batch(24, seed=2), OpenVinoInt8Config(subset_size=24)
    )


def test_fp32_matches_onnxruntime_tightly(tiny_onnx, reference):
    batch, seg_ref, cls_ref = reference
    predictor = OpenVinoPredictor(tiny_onnx, "fp32", threads=1)
    seg, cls = predictor(batch)
    assert isinstance(predictor, Predictor)
    assert (predictor.name, predictor.precision, predictor.device) == ("openvino", "fp32", "cpu")
    assert seg.dtype == np.float32 and seg.shape == seg_ref.shape and cls.shape == cls_ref.shape
    np.testing.assert_allclose(seg, seg_ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(cls, cls_ref, atol=1e-4, rtol=1e-4)
    # fp32 is asked for explicitly: on AMX CPUs OpenVINO's own default would be bf16.
    assert describe_settings(predictor)["INFERENCE_PRECISION_HINT"] == "f32"
    assert set(layer_precisions(predictor)["Convolution"]) == {"f32"}


def test_a_compiled_model_is_cached_and_a_cached_one_gives_the_same_outputs(
    tiny_onnx, reference, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGEPANC_HOME", str(tmp_path / "home"))
    batch, seg_ref, _ = reference
    first = OpenVinoPredictor(tiny_onnx, "fp32", threads=1)
    blobs = list((tmp_path / "home" / "openvino").iterdir())
    assert blobs, "the first compile leaves the compiled model in the cache"
    cached = OpenVinoPredictor(tiny_onnx, "fp32", threads=1)
    assert sorted((tmp_path / "home" / "openvino").iterdir()) == sorted(blobs)
    np.testing.assert_array_equal(cached(batch)[0], first(batch)[0])
    np.testing.assert_allclose(cached(batch)[0], seg_ref, atol=1e-4, rtol=1e-4)
    # a folder that cannot be made means no cache, not a failed run
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EDGEPANC_HOME", str(tmp_path / "file"))
    assert model_cache_dir() is None
    np.testing.assert_array_equal(
        OpenVinoPredictor(tiny_onnx, "fp32", threads=1)(batch)[0], first(batch)[0]
    )


def test_outputs_belong_to_the_caller(tiny_onnx, reference):
    batch = reference[0]
    predictor = OpenVinoPredictor(tiny_onnx, threads=1)
    first, _ = predictor(batch)
    kept = first.copy()
    first[:] = 0.0  # the caller may write into what it got
    second, _ = predictor(batch[:1])
    np.testing.assert_array_equal(second[0], kept[0])
    assert first.flags.writeable and not np.shares_memory(first, second)


def test_bf16_runs_natively_or_is_refused_with_the_reason(tiny_onnx, reference):
    """On a CPU with native bf16 it computes in bf16 within a looser tolerance; elsewhere it says why not."""
    if not MACHINE_HAS_BF16:
        with pytest.raises(BackendUnavailable, match="avx512_bf16 nor amx_bf16"):
            OpenVinoPredictor(tiny_onnx, "bf16", threads=1)
        return
    batch, seg_ref, _ = reference
    predictor = OpenVinoPredictor(tiny_onnx, "bf16", threads=1)
    seg, _ = predictor(batch)
    assert describe_settings(predictor)["INFERENCE_PRECISION_HINT"] == "bf16"
    assert set(layer_precisions(predictor)["Convolution"]) == {"bf16"}
    error = np.abs(seg - seg_ref).max()
    assert 0 < error < 0.05 * np.abs(seg_ref).max() + 0.05  # really bf16, and still close
    assert (seg.argmax(1) == seg_ref.argmax(1)).mean() > 0.97


def test_bf16_is_refused_on_a_cpu_without_native_bf16(tiny_onnx):
    with pytest.raises(BackendUnavailable, match="neither avx512_bf16 nor amx_bf16"):
        OpenVinoPredictor(tiny_onnx, "bf16", threads=1, cpu_flags=lambda: NO_BF16)
    with pytest.raises(BackendUnavailable, match="emulate"):
        OpenVinoPredictor(
            tiny_onnx, "int8", threads=1, float_precision="bf16", cpu_flags=lambda: NO_BF16
        )
    # fp32 does not depend on the flags at all.
    fp32 = OpenVinoPredictor(tiny_onnx, "fp32", threads=1, cpu_flags=lambda: NO_BF16)
    assert fp32.precision == "fp32"


def test_compile_config_follows_precision_flags_and_threads():
    assert compile_config(OpenVinoSettings("bf16", threads=3), AMX) == {
        "INFERENCE_PRECISION_HINT": "bf16",
        "INFERENCE_NUM_THREADS": 3,
        "PERFORMANCE_HINT": "LATENCY",
    }
    assert (
        compile_config(OpenVinoSettings("bf16"), {"avx512_bf16"})["INFERENCE_PRECISION_HINT"]
        == "bf16"
    )
    assert compile_config(OpenVinoSettings("int8"), NO_BF16)["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config(OpenVinoSettings("fp32"), AMX)["INFERENCE_NUM_THREADS"] == usable_cores()
    with pytest.raises(BackendUnavailable, match="not 'fp16'"):
        OpenVinoSettings("fp16")
    with pytest.raises(ValueError, match="threads"):
        OpenVinoSettings("fp32", threads=0)


def test_threads_follow_the_cores_the_process_may_use(tiny_onnx):
    assert usable_cores() == len(os.sched_getaffinity(0))
    predictor = OpenVinoPredictor(tiny_onnx)
    assert predictor.threads == usable_cores()
    assert describe_settings(predictor)["INFERENCE_NUM_THREADS"] == str(usable_cores())
    assert describe_settings(predictor)["PERFORMANCE_HINT"] == "LATENCY"


def test_openvino_path_imports_no_torch_and_follows_affinity(tiny_onnx):
    """A fresh interpreter pinned to one core runs the model without loading torch."""
    script = textwrap.dedent(
        f"""
        import os, sys
        import numpy as np
        os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
        from edgepanc.backends.openvino_backend import OpenVinoPredictor
        predictor = OpenVinoPredictor({str(tiny_onnx)!r})
        seg, cls = predictor(np.zeros((1, 1, {", ".join(map(str, PATCH))}), np.float32))
        heavy = [m for m in ("torch", "nncf", "edgepanc.training", "edgepanc.quantization")
                 if m in sys.modules]
        print(predictor.threads, seg.shape[1], cls.shape[1], heavy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split("\n")[-2] == "1 3 3 []"


def test_int8_runs_in_int8_and_agrees_with_fp32(tiny_onnx, tiny_int8, reference):
    batch, seg_ref, cls_ref = reference
    assert tiny_int8.with_suffix(".bin").is_file()
    assert "FakeQuantize" in tiny_int8.read_text()
    predictor = OpenVinoPredictor(tiny_int8, "int8", threads=1, artifact="openvino_int8")
    seg, cls = predictor(batch)
    convolutions = layer_precisions(predictor)["Convolution"]
    assert set(convolutions) <= {"u8", "i8"}  # every convolution executes in INT8
    assert seg.shape == seg_ref.shape and cls.shape == cls_ref.shape
    assert not np.allclose(seg, seg_ref, atol=1e-4)  # it is not the fp32 graph
    agree = seg.argmax(1) == seg_ref.argmax(1)
    # Random weights leave many near-ties, which INT8 may flip; where fp32 is decided it agrees.
    top = np.sort(seg_ref, axis=1)
    decided = top[:, -1] - top[:, -2] > 0.2
    assert agree.mean() > 0.8 and decided.mean() > 0.3 and agree[decided].mean() > 0.98
    assert np.corrcoef(seg.ravel(), seg_ref.ravel())[0, 1] > 0.95


def quantized_inputs(path: Path) -> list[str]:
    """The operations of an IR that read a FakeQuantize's output."""
    import openvino

    model = openvino.Core().read_model(str(path))
    return [
        target.get_node().get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "FakeQuantize"
        for target in op.output(0).get_target_inputs()
    ]


def test_int8_leaves_the_subtype_head_in_float(tiny_onnx, tiny_int8, tmp_path):
    quantized = quantized_inputs(tiny_int8)
    assert any("conv" in name for name in quantized)
    # the head's pooling, attenuation statistics and fully connected layers read float
    assert not any("cls_head" in name for name in quantized)
    # Without the float patterns NNCF quantizes the head too: the default is what keeps it out.
    everything = quantize_openvino_int8(
        tiny_onnx,
        tmp_path / "all.xml",
        phantom_batch(8, seed=2),
        OpenVinoInt8Config(subset_size=8, float_patterns=()),
    )
    assert any("cls_head" in name for name in quantized_inputs(everything))


def test_int8_with_bf16_float_layers_where_native(tiny_int8, reference):
    if not MACHINE_HAS_BF16:
        with pytest.raises(BackendUnavailable, match="emulate"):
            OpenVinoPredictor(tiny_int8, "int8", threads=1, float_precision="bf16")
        return
    predictor = OpenVinoPredictor(tiny_int8, "int8", threads=1, float_precision="bf16")
    seg, _ = predictor(reference[0])
    assert describe_settings(predictor)["INFERENCE_PRECISION_HINT"] == "bf16"
    assert (seg.argmax(1) == reference[1].argmax(1)).mean() > 0.85


def test_quantization_writes_nothing_when_it_fails(tiny_onnx, tmp_path):
    out = tmp_path / "int8.xml"
    with pytest.raises(ValueError, match="calibration patches are"):
        quantize_openvino_int8(tiny_onnx, out, np.zeros((2, 1, 16, 16, 8), np.float32))
    with pytest.raises(ValueError, match="at least one patch"):
        quantize_openvino_int8(tiny_onnx, out, np.zeros((0, 1, *PATCH), np.float32))
    with pytest.raises(InputError, match="not found"):
        quantize_openvino_int8(tmp_path / "absent.onnx", out, phantom_batch(2, seed=0))
    with pytest.raises(ValueError, match=r"\.xml"):
        quantize_openvino_int8(tiny_onnx, tmp_path / "int8.onnx", phantom_batch(2, seed=0))
    assert list(tmp_path.iterdir()) == []


def test_quantization_leaves_only_the_ir_pair(tiny_int8):
    assert sorted(p.name for p in tiny_int8.parent.iterdir()) == ["tiny_int8.bin", "tiny_int8.xml"]


def test_calibration_batches_take_stacked_or_single_patches():
    stacked = calibration_batches(np.zeros((3, 1, *PATCH)))
    assert [b.shape for b in stacked] == [(1, 1, *PATCH)] * 3 and stacked[0].dtype == np.float32
    singles = calibration_batches([np.zeros((1, *PATCH)), np.ones((1, 1, *PATCH))])
    assert [float(b.max()) for b in singles] == [0.0, 1.0]
    with pytest.raises(ValueError, match="differ in shape"):
        calibration_batches([np.zeros((1, *PATCH)), np.zeros((1, 8, 8, 8))])
    with pytest.raises(ValueError, match=r"\[1, D, H, W\]"):
        calibration_batches(np.zeros((2, 2, *PATCH)))
    with pytest.raises(ValueError, match="preset"):
        OpenVinoInt8Config(preset="fast")


def test_bad_model_files_are_input_errors(tiny_onnx, tmp_path):
    with pytest.raises(InputError, match="not found"):
        OpenVinoPredictor(tmp_path / "absent.onnx")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(InputError, match=r"\.onnx files and \.xml"):
        OpenVinoPredictor(tmp_path / "model.pt")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(InputError, match="OpenVINO cannot load the model"):
        OpenVinoPredictor(garbage)


def test_a_graph_with_other_io_names_is_refused(tiny_onnx, tmp_path):
    import onnx

    graph = onnx.load(str(tiny_onnx))
    graph.graph.input[0].name = "x"
    for node in graph.graph.node:
        node.input[:] = ["x" if name == "image" else name for name in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(graph, str(path))
    with pytest.raises(InputError, match="expected input 'image'"):
        OpenVinoPredictor(path, threads=1)


def test_latency_script_times_every_backend_in_one_run(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "backend_latency.py"
    out = tmp_path / "latency.json"
    args = ["--case", "tiny:16x16x16:2", "--rounds", "2", "--threads", "1", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",  # NNCF draws progress bars even without a terminal
        errors="replace",
        timeout=300,
        check=True,
    )
    report = json.loads(out.read_text())
    row = report["ms_per_patch"]["`tiny` preset, 16x16x16, batch 2"]
    expected = {"ORT fp32", "OpenVINO fp32", "OpenVINO INT8 (rest fp32)", "torch fp32"}
    if MACHINE_HAS_BF16:
        expected |= {"OpenVINO bf16", "OpenVINO INT8 (rest bf16)"}
    assert set(row) == expected and all(ms > 0 for ms in row.values())
    assert (report["threads"], report["rounds"]) == (1, 2)
    assert "| `tiny` preset, 16x16x16, batch 2 |" in done.stdout


# --- selection: `run --backend openvino` ----------------------------------------------------


@pytest.fixture()
def onnx_bundle(tiny_onnx, tiny_int8, tmp_path, monkeypatch) -> dict:
    from edgepanc.backends import devices

    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    (tmp_path / "model_fp32.onnx").write_bytes(tiny_onnx.read_bytes())
    for suffix in (".xml", ".bin"):
        (tmp_path / f"ov_int8{suffix}").write_bytes(tiny_int8.with_suffix(suffix).read_bytes())
    fp32 = {"file": "model_fp32.onnx", "backend": "onnxruntime", "precision": "fp32"}
    return {
        "root": tmp_path,
        "artifacts": {"onnx_fp32": {**fp32, "latency_ms": 9.0}},
        "default_artifact": "onnx_fp32",
    }


def test_backend_openvino_runs_the_bundles_fp32_onnx(onnx_bundle, reference):
    from edgepanc.backends.selection import available_backends, choose_backend, select_predictor

    assert "openvino" in available_backends()
    choice = choose_backend(onnx_bundle, backend="openvino")
    expected = "bf16" if MACHINE_HAS_BF16 else "fp32"
    assert (choice.backend, choice.precision, choice.device) == ("openvino", expected, "cpu")
    assert choice.artifact == "onnx_fp32" and "default" in choice.reason
    predictor = select_predictor(onnx_bundle, backend="openvino", precision="fp32")
    assert isinstance(predictor, OpenVinoPredictor) and predictor.artifact == "onnx_fp32"
    np.testing.assert_allclose(predictor(reference[0])[0], reference[1], atol=1e-4, rtol=1e-4)
    # auto still prefers the bundle's default artifact as it is recorded
    assert choose_backend(onnx_bundle).backend == "onnxruntime"


def test_backend_openvino_refuses_bf16_without_native_bf16(onnx_bundle, monkeypatch):
    from edgepanc.backends import openvino_backend
    from edgepanc.backends.selection import choose_backend
    from edgepanc.errors import BundleError

    monkeypatch.setattr(openvino_backend, "machine_cpu_flags", lambda: NO_BF16)
    with pytest.raises(BundleError, match="onnx_fp32: bf16 needs a CPU that computes it natively"):
        choose_backend(onnx_bundle, backend="openvino", precision="bf16")
    assert choose_backend(onnx_bundle, backend="openvino").precision == "fp32"
    monkeypatch.setattr(openvino_backend, "machine_cpu_flags", lambda: AMX)
    assert choose_backend(onnx_bundle, backend="openvino").precision == "bf16"


def test_backend_openvino_int8_needs_an_openvino_artifact(onnx_bundle, reference):
    from edgepanc.backends.selection import choose_backend, select_predictor
    from edgepanc.errors import BundleError

    with pytest.raises(BundleError, match="backend=openvino precision=int8"):
        choose_backend(onnx_bundle, backend="openvino", precision="int8")
    onnx_bundle["artifacts"]["openvino_int8"] = {
        "file": "ov_int8.xml",
        "backend": "openvino",
        "precision": "int8",
    }
    predictor = select_predictor(onnx_bundle, backend="openvino", precision="int8")
    assert (predictor.name, predictor.precision, predictor.artifact) == (
        "openvino",
        "int8",
        "openvino_int8",
    )
    seg, _ = predictor(reference[0])
    assert (seg.argmax(1) == reference[1].argmax(1)).mean() > 0.85
    with pytest.raises(BundleError, match="OpenVINO runs on the CPU, not on cuda"):
        choose_backend(onnx_bundle, backend="openvino", device="cuda")


def test_run_with_backend_openvino_loads_no_torch(tmp_path):
    """`edgepanc run --backend openvino` end to end: masks written, torch never imported."""
    from edgepanc.bundle import load_bundle, save_bundle_metadata, write_bundle

    from runtime_support import TINY_PLAN, phantom, write_image

    torch.manual_seed(0)
    folder = tmp_path / "bundle"
    model = build_network("tiny").eval()
    write_bundle(folder, model, TINY_PLAN.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and instance-norm notes
        export_onnx(model, folder / "model_fp32.onnx", TINY_PLAN.patch_size)
    bundle = load_bundle(folder)
    bundle.add_artifact("onnx_fp32", "model_fp32.onnx", "onnxruntime", "fp32", make_default=True)
    save_bundle_metadata(bundle)
    scan = write_image(phantom(), tmp_path / "scan_0000.nii.gz")
    code = textwrap.dedent(
        f"""
        import sys
        from edgepanc.cli import main
        try:
            main(["run", {str(scan)!r}, "--model", {str(folder)!r}, "--out", {str(tmp_path / "out")!r},
                  "--backend", "openvino", "--device", "cpu"])
        except SystemExit as exit:
            print("exit", exit.code, "torch" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split()[-3:] == ["exit", "0", "False"], done.stdout + done.stderr
    assert "openvino" in done.stderr  # the one-line backend choice names it
    assert any((tmp_path / "out").rglob("*.nii.gz"))
