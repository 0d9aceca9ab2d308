"""What the bench suites share: phantom cases on disk, the bench bundle, timed subprocess runs.

End-to-end runs are separate processes (``edgepanc run`` for the optimised runtime,
``python -m edgepanc.runtime.baseline`` for the baseline) so that their wall time includes
start-up and model loading, and their peak resident memory is measured from outside with
:class:`edgepanc.memory.PeakMemoryMonitor`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from edgepanc.io.atomic import atomic_path
from edgepanc.memory import PeakMemoryMonitor

BUNDLE_ENV = "EDGEPANC_BENCH_BUNDLE"
ROUNDS_ENV = "EDGEPANC_BENCH_ROUNDS"
FULL_SHAPE = (300, 512, 512)  # (z, y, x): the product contract's whole abdominal CT
MEMORY_BUDGET = "1.5GB"  # the product contract: a 512 x 512 x 300 CT fits in 1.5 GB


def rounds(default: int) -> int:
    """Repetitions per measurement: ``$EDGEPANC_BENCH_ROUNDS`` or ``default`` (CI keeps it small)."""
    value = os.environ.get(ROUNDS_ENV)
    return max(1, int(value)) if value else default


# --- phantom cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchCase:
    """One scan on disk with its reference mask."""

    name: str  # "quiz" or "full"
    image: Path
    label: Path
    shape: tuple[int, int, int]  # (z, y, x)


def _write_nifti(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def full_size_spec(seed: int, slices: int = FULL_SHAPE[0], tries: int = 400) -> Any:
    """A full-size PhantomSpec whose grid has exactly ``slices`` slices (or None if none found).

    The synth draws 200-400 slices per case; replaying its cheap sampling steps (anatomy, lesion,
    scanner, grid) finds a case index with the contract's 300 without rendering any voxel.
    """
    from edgepanc.synth.phantom import (
        PhantomSpec,
        full_grid,
        sample_anatomy,
        sample_lesion,
        sample_scanner,
    )

    for index in range(1, tries + 1):
        spec = PhantomSpec(seed=seed, split="test", subtype=index % 3, index=index, size="full")
        rng = spec.rng()
        anatomy = sample_anatomy(rng)
        sample_lesion(rng, anatomy.pancreas, spec.subtype)
        grid, _ = full_grid(rng, anatomy, sample_scanner(rng, "full"))
        if grid.shape[0] == slices:
            return spec
    return None


def make_phantom_case(folder: Path, size: str, seed: int = 7) -> BenchCase:
    """Generate one ``size`` ("quiz" or "full") phantom and write image and mask as NIfTI."""
    from edgepanc.synth.phantom import PhantomSpec, generate_phantom

    if size == "full":
        spec = full_size_spec(seed) or PhantomSpec(seed, "test", 0, 1, "full")
    else:
        spec = PhantomSpec(seed=seed, split="test", subtype=2, index=1, size="quiz")
    phantom = generate_phantom(spec)
    image = _write_nifti(phantom.image_sitk(), folder / f"bench_{size}_0000.nii.gz")
    label = _write_nifti(phantom.label_sitk(), folder / f"bench_{size}_label.nii.gz")
    return BenchCase(size, image, label, tuple(int(s) for s in phantom.image.shape))  # type: ignore[arg-type]


# --- end-to-end runs in a subprocess -----------------------------------------------------------


@dataclass(frozen=True)
class TimedRun:
    """Wall seconds and peak RSS (whole process tree) of one subprocess, and its case JSON."""

    seconds: float
    peak_rss_bytes: int
    case: dict[str, Any]


def edgepanc_executable() -> list[str]:
    """``edgepanc`` of this interpreter's environment (the venv's console script)."""
    script = Path(sys.executable).with_name("edgepanc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgepanc.cli"]


def optimised_command(
    scan: Path, bundle: Path, out: Path, memory_budget: str | None = None
) -> list[str]:
    """``edgepanc run`` with the runtime's defaults (auto backend, ROI auto, streaming) but no
    preview, which is the optimised path every comparison means. The memory gate adds
    ``memory_budget``: a budget lets the runtime grow its tile batch up to it (8 tiles instead of
    2 at 1.5GB on the full-size phantom, 547 MB instead of 505 MB, no faster on 2 cores)."""
    cmd = [
        *edgepanc_executable(),
        "run",
        str(scan),
        "--model",
        str(bundle),
        "--out",
        str(out),
        "--overwrite",
        # the picture is an extra nnU-Net, MONAI and the baseline do not draw (about 0.5 s)
        "--no-preview",
    ]
    return cmd + (["--memory-budget", memory_budget] if memory_budget else [])


def baseline_command(scan: Path, bundle: Path, out: Path) -> list[str]:
    """The baseline (:mod:`edgepanc.runtime.baseline`) as its own process."""
    return [
        sys.executable,
        "-m",
        "edgepanc.runtime.baseline",
        str(scan),
        "--model",
        str(bundle),
        "--out",
        str(out),
        "--overwrite",
    ]


def mask_stem(scan: Path) -> str:
    """``bench_quiz_0000.nii.gz`` -> ``bench_quiz`` (the runtime's mask naming)."""
    from edgepanc.runtime.scans import mask_name_for

    return mask_name_for(scan)[: -len(".nii.gz")]


def read_masks(outs: dict[str, Path], scan: Path) -> dict[str, Any]:
    """The mask ``edgepanc run`` wrote for ``scan`` in each of ``outs``, as label arrays."""
    name = f"{mask_stem(scan)}.nii.gz"
    return {
        key: sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))) for key, out in outs.items()
    }


def timed_run(cmd: Sequence[str], scan: Path, out: Path, timeout_s: float = 900.0) -> TimedRun:
    """Run ``cmd`` once from a clean ``out``; wall time, peak RSS from outside, the case JSON."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    with PeakMemoryMonitor(proc.pid, interval_s=0.02) as monitor:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{stdout[-2000:]}\n{stderr[-4000:]}"
        )
    case_json = out / f"{mask_stem(scan)}.json"
    case = json.loads(case_json.read_text()) if case_json.is_file() else {}
    return TimedRun(seconds, monitor.peak_bytes, case)


def release_commands(
    scan: Path, bundle: Path, then_tree: Path, outs: dict[str, Path], now_flags: Sequence[str] = ()
) -> dict[str, list[str]]:
    """``edgepanc run`` of this tree (``now``, no preview) and of the earlier tree ``then_tree``
    (``then``: its package first on PYTHONPATH, same interpreter and packages, so only the code
    differs; the earlier runtime drew no preview by default)."""
    base = ["run", str(scan), "--model", str(bundle), "--overwrite"]
    # -P: the current directory (maybe this tree) must not come before the earlier one
    then = [sys.executable, "-P", "-m", "edgepanc", *base, "--out", str(outs["then"])]
    now = [*edgepanc_executable(), *base, "--out", str(outs["now"]), "--no-preview", *now_flags]
    return {
        "then": ["env", f"PYTHONPATH={Path(then_tree).resolve()}", *then],
        "now": ["env", "-u", "PYTHONPATH", *now],
    }


def alternate(
    commands: dict[str, list[str]], scan: Path, outs: dict[str, Path], n: int
) -> dict[str, list[TimedRun]]:
    """Run each command ``n`` times, interleaved (A B A B ...), so drift hits both alike."""
    runs: dict[str, list[TimedRun]] = {name: [] for name in commands}
    for _ in range(n):
        for name, cmd in commands.items():
            runs[name].append(timed_run(cmd, scan, outs[name]))
    return runs


@dataclass(frozen=True)
class HeadToHead:
    """Two ``edgepanc run`` commands run in turns on one scan: each one's runs, and the Dice
    between their masks (``agreement``: whole and lesion)."""

    runs: dict[str, list[TimedRun]]
    agreement: dict[str, float]

    def median_s(self, key: str) -> float:
        return statistics.median(r.seconds for r in self.runs[key])

    def peak(self, key: str) -> int:
        return max(r.peak_rss_bytes for r in self.runs[key])

    def speedup(self, slow: str, fast: str) -> float:
        """Median wall time of ``slow`` over that of ``fast``."""
        return self.median_s(slow) / self.median_s(fast)

    def case(self, key: str) -> dict[str, Any]:
        """The case JSON of ``key``'s last run."""
        return self.runs[key][-1].case


def head_to_head(
    commands: dict[str, list[str]], scan: Path, outs: dict[str, Path], n: int
) -> HeadToHead:
    """:func:`alternate` the two ``commands`` ``n`` times each and compare their masks."""
    from edgepanc.metrics import segmentation_metrics

    runs = alternate(commands, scan, outs, n)
    masks = read_masks(outs, scan)
    first, second = (masks[key] for key in commands)
    metrics = segmentation_metrics(first, second)
    return HeadToHead(runs, {k: metrics[k] for k in ("whole_dsc", "lesion_dsc")})


# Gate verdicts of this session, printed in the terminal summary (bench/conftest.py).
GATE_LINES: list[str] = []


# --- timing in-process ---------------------------------------------------------------------------


def time_calls(fn: Any, arg: Any, n: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``n`` calls ``fn(arg)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(arg)
    seconds = []
    for _ in range(n):
        start = time.perf_counter()
        fn(arg)
        seconds.append(time.perf_counter() - start)
    return seconds


# --- the physical limit: one large 3D convolution ---------------------------------------------

CONV_CHANNELS = 32
CONV_SIZE = 64
# multiply-adds of a 3x3x3 conv with 'same' padding: every output voxel of every output channel
# is a dot product over in_channels x 27 weights; 2 FLOPs per multiply-add
CONV_FLOPS = 2 * CONV_CHANNELS * CONV_CHANNELS * 27 * CONV_SIZE**3


def _conv_module() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Conv3d(CONV_CHANNELS, CONV_CHANNELS, 3, padding=1).eval()


def _conv_input() -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.standard_normal((1, CONV_CHANNELS, *(CONV_SIZE,) * 3), dtype=np.float32)


def _export_conv(folder: Path, precision: str) -> Path:
    """The convolution as ONNX (fp32), or statically quantized to INT8 QDQ (per channel)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "conv_fp32.onnx"
    if not fp32.is_file():
        with atomic_path(fp32) as tmp:
            torch.onnx.export(
                _conv_module(),
                (torch.from_numpy(_conv_input()),),
                str(tmp),
                input_names=["x"],
                output_names=["y"],
                opset_version=17,
                dynamo=False,
            )
    if precision == "fp32":
        return fp32
    int8 = folder / "conv_int8.onnx"
    if not int8.is_file():
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"x": _conv_input()}])

            def get_next(self) -> dict | None:
                return next(self.batches, None)

        with atomic_path(int8) as tmp:
            quantize_static(
                str(fp32),
                str(tmp),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
            )
    return int8


def conv_limit_seconds(backend: str, precision: str, folder: Path, n: int) -> list[float]:
    """Seconds per run of the reference convolution through ``backend`` at ``precision``."""
    x = _conv_input()
    if backend == "torch":
        import torch

        module = _conv_module()
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        tensor = torch.from_numpy(x)

        def run(inp: Any) -> Any:
            with (
                torch.inference_mode(),
                torch.amp.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None),
            ):
                return module(inp)

        return time_calls(run, tensor, n)
    if backend == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(_export_conv(folder, precision)), providers=["CPUExecutionProvider"]
        )
        return time_calls(lambda inp: session.run(None, {"x": inp}), x, n)
    if backend == "openvino":
        request = _openvino_conv(folder, precision).create_infer_request()
        return time_calls(lambda inp: request.infer({"x": inp}, share_inputs=True), x, n)
    raise ValueError(f"unknown backend {backend!r}")


def _openvino_conv(folder: Path, precision: str) -> Any:
    """The convolution compiled by OpenVINO as the runtime compiles its models: fp32 and bf16
    from the fp32 ONNX file, INT8 quantized by NNCF (calibrated on the input itself).
    BackendUnavailable where this CPU or install cannot (bf16 without native support)."""
    import openvino

    from edgepanc.backends.openvino_backend import (
        OpenVinoSettings,
        compile_config,
        machine_cpu_flags,
        openvino_problem,
    )

    problem = openvino_problem()
    if problem is not None:
        from edgepanc.backends import BackendUnavailable

        raise BackendUnavailable(problem)
    config = compile_config(OpenVinoSettings(precision), machine_cpu_flags())
    core = openvino.Core()
    model = core.read_model(str(_export_conv(folder, "fp32")))
    if precision == "int8":
        import nncf

        model = nncf.quantize(model, nncf.Dataset([_conv_input()]), subset_size=1)
    return core.compile_model(model, "CPU", config)
