"""OpenVINO predictor: the fast CPU path for fp32 and bf16 ONNX graphs and NNCF INT8 models.

It runs the same exported ONNX file as ONNX Runtime (input ``image``, outputs ``seg_logits`` and
``cls_logits``), or an OpenVINO IR (``.xml`` with its ``.bin``) such as the INT8 model that
:mod:`edgepanc.quantization.openvino_int8` writes. bf16 is offered only on CPUs that compute it
natively (AVX512-BF16 or AMX): elsewhere OpenVINO would emulate it, slower than fp32. Nothing
here imports torch: a CPU run through OpenVINO must not pay for loading it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepanc.backends.base import (
    CLS_OUTPUT_NAME,
    INPUT_NAME,
    SEG_OUTPUT_NAME,
    BackendUnavailable,
    check_batch,
    writable_float32,
)
from edgepanc.doctor import CPUINFO_PATH, cpu_flags
from edgepanc.errors import InputError

OPENVINO_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
# The x86 flags with which oneDNN computes bf16 in hardware; without them bf16 is emulated.
NATIVE_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
MODEL_SUFFIXES: tuple[str, ...] = (".onnx", ".xml")


def openvino_problem() -> str | None:
    """Why OpenVINO cannot run here (not installed, or no CPU device), or None when it can.

    Example: ``openvino_problem()`` -> ``None`` after ``pip install openvino`` on an x86 machine.
    """
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed (pip install openvino)"
    try:
        devices = openvino_core().available_devices
    except Exception as exc:  # a broken plugin install raises RuntimeError with a long trace
        return f"openvino cannot start: {_first_line(exc)}"
    return None if "CPU" in devices else f"openvino finds no CPU device (has {devices})"


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core`` (creating one takes about 0.1 s; the checks and the
    compiles share it).

    Example: ``openvino_core().available_devices`` -> ``["CPU"]``.
    """
    import openvino

    return openvino.Core()


def model_cache_dir() -> Path | None:
    """Where OpenVINO keeps compiled models (``edgepanc_home()/openvino``), so that a run after
    the first loads its model instead of compiling it (on the full phantom's bundle 0.07 instead
    of 0.19 s, 14 MiB less); None where that folder cannot be made.

    Example: ``model_cache_dir()`` -> ``Path("~/.cache/edgepanc/openvino")``, expanded.
    """
    from edgepanc.bundle import edgepanc_home

    folder = edgepanc_home() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def machine_cpu_flags() -> frozenset[str]:
    """The CPU flags of ``/proc/cpuinfo`` as ``edgepanc doctor`` reads them (empty if unreadable).

    Example: ``"avx512_bf16" in machine_cpu_flags()`` -> ``True`` on a Sapphire Rapids Xeon.
    """
    try:
        text = CPUINFO_PATH.read_text()
    except OSError:
        return frozenset()
    arch, flags = cpu_flags(text)
    return frozenset(flags) if arch == "x86" else frozenset()


def native_bf16_problem(flags: Collection[str]) -> str | None:
    """Why bf16 would not be native with these CPU ``flags``, or None when it is.

    Example: ``native_bf16_problem({"avx2", "fma"})`` -> ``"... neither avx512_bf16 nor amx_bf16"``.
    """
    if any(flag in flags for flag in NATIVE_BF16_FLAGS):
        return None
    return (
        "bf16 needs a CPU that computes it natively and this one has neither "
        f"{' nor '.join(NATIVE_BF16_FLAGS)}; OpenVINO would emulate it, slower than fp32"
    )


def usable_cores() -> int:
    """How many cores this process may run on (taskset, cgroup cpusets), at least 1.

    Example: ``usable_cores()`` -> ``2`` under ``taskset -c 0,1`` on a 16-core machine.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class OpenVinoSettings:
    """How a model is compiled: its arithmetic, the float arithmetic beside INT8, and threads.

    ``precision`` is what the model computes in; for an INT8 model ``float_precision`` is what
    the layers NNCF left unquantized compute in. ``threads`` None follows :func:`usable_cores`.

    Example: ``OpenVinoSettings("bf16", threads=2)``.
    """

    precision: str = "fp32"
    float_precision: str = "fp32"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in OPENVINO_PRECISIONS:
            raise BackendUnavailable(
                f"OpenVINO runs {', '.join(OPENVINO_PRECISIONS)}, not {self.precision!r}"
            )
        if self.float_precision not in ("fp32", "bf16"):
            raise ValueError(
                f"float_precision must be 'fp32' or 'bf16', got {self.float_precision!r}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    def arithmetic(self) -> str:
        """The float arithmetic OpenVINO is told to use: bf16 for a bf16 model, else as set."""
        return "bf16" if self.precision == "bf16" else self.float_precision


def compile_config(settings: OpenVinoSettings, flags: Collection[str]) -> dict[str, Any]:
    """The ``compile_model`` properties for ``settings`` on a CPU with ``flags``.

    fp32 is asked for explicitly: on CPUs with AMX OpenVINO otherwise computes in bf16 by
    default. bf16 on a CPU without native bf16 raises :class:`BackendUnavailable` with the reason.

    Example: ``compile_config(OpenVinoSettings("fp32", threads=2), set())`` ->
    ``{"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}``.
    """
    arithmetic = settings.arithmetic()
    if arithmetic == "bf16":
        problem = native_bf16_problem(flags)
        if problem is not None:
            raise BackendUnavailable(problem)
    return {
        "INFERENCE_PRECISION_HINT": "bf16" if arithmetic == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": settings.threads or usable_cores(),
        "PERFORMANCE_HINT": "LATENCY",
    }


class OpenVinoPredictor:
    """Run an ONNX graph or OpenVINO IR on the CPU through OpenVINO, as a :class:`Predictor`.

    ``precision`` is ``"fp32"``, ``"bf16"`` (an fp32 file computed in bf16, only on CPUs with
    native bf16) or ``"int8"`` (an NNCF-quantized file). ``cpu_flags`` stands in for the
    machine's ``/proc/cpuinfo`` flags (tests script it).

    Example: ``OpenVinoPredictor("model.onnx", "bf16")(np.zeros((1, 1, 64, 64, 64), np.float32))``
    -> ``(seg [1, 3, 64, 64, 64], cls [1, 3])``.
    """

    name = "openvino"
    device = "cpu"

    def __init__(
        self,
        path: str | Path,
        precision: str = "fp32",
        threads: int | None = None,
        artifact: str | None = None,
        float_precision: str = "fp32",
        cpu_flags: Callable[[], Collection[str]] = machine_cpu_flags,
    ) -> None:
        problem = openvino_problem()
        if problem is not None:
            raise BackendUnavailable(problem)
        path = Path(path)
        if path.suffix not in MODEL_SUFFIXES:
            raise InputError(path, "OpenVINO runs .onnx files and .xml IR, not this kind of file")
        if not path.is_file():
            raise InputError(path, "model file not found")
        self.settings = OpenVinoSettings(precision, float_precision, threads)
        config = compile_config(self.settings, cpu_flags())
        cache = model_cache_dir()
        try:
            self.compiled = openvino_core().compile_model(
                str(path), "CPU", {**config, **({"CACHE_DIR": str(cache)} if cache else {})}
            )
        except RuntimeError as exc:  # OpenVINO raises RuntimeError for every read/compile failure
            raise InputError(path, f"OpenVINO cannot load the model: {_first_line(exc)}") from exc
        _check_io_names(path, self.compiled)
        self.request = self.compiled.create_infer_request()
        self.path = path
        self.precision = precision
        self.artifact = artifact
        self.threads = int(config["INFERENCE_NUM_THREADS"])

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # share_inputs avoids a copy of the batch; outputs are copies (share_outputs=False), so
        # the next call cannot overwrite what the caller holds.
        results = self.request.infer({INPUT_NAME: check_batch(batch)}, share_inputs=True)
        seg = results[self.compiled.output(SEG_OUTPUT_NAME)]
        cls = results[self.compiled.output(CLS_OUTPUT_NAME)]
        return writable_float32(seg), writable_float32(cls)

    def __repr__(self) -> str:
        return (
            f"OpenVinoPredictor({str(self.path)!r}, precision={self.precision!r}, "
            f"threads={self.threads})"
        )


def _check_io_names(path: Path, compiled: Any) -> None:
    # A tensor may carry several names in an IR (NNCF keeps the graph's internal ones too).
    inputs = [set(port.get_names()) for port in compiled.inputs]
    outputs: set[str] = set().union(*(port.get_names() for port in compiled.outputs))
    missing = [n for n in (SEG_OUTPUT_NAME, CLS_OUTPUT_NAME) if n not in outputs]
    if len(inputs) != 1 or INPUT_NAME not in inputs[0] or missing:
        raise InputError(
            path,
            f"expected input '{INPUT_NAME}' and outputs '{SEG_OUTPUT_NAME}', '{CLS_OUTPUT_NAME}'; "
            f"the model has inputs {[sorted(i) for i in inputs]} and outputs {sorted(outputs)}",
        )


def _first_line(exc: BaseException) -> str:
    """The informative line of an OpenVINO error (it prefixes each with 'Exception from ...')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check "))]
    return (useful or lines or [type(exc).__name__])[0]


def describe_settings(predictor: OpenVinoPredictor) -> Mapping[str, Any]:
    """What the compiled model actually runs with, read back from OpenVINO.

    Example: ``describe_settings(p)`` -> ``{"INFERENCE_PRECISION_HINT": "bf16", ...}``.
    """
    values = {
        key: predictor.compiled.get_property(key)
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT")
    }
    # Element types come back as openvino.Type objects; to_string() gives "bf16", "f32".
    return {k: v.to_string() if hasattr(v, "to_string") else str(v) for k, v in values.items()}


def layer_precisions(predictor: OpenVinoPredictor) -> dict[str, dict[str, int]]:
    """How many layers of each type run in each precision, as OpenVINO compiled them.

    This is what the CPU plugin executes, not what was asked for: an INT8 model whose
    convolutions report ``u8``/``i8`` really runs them in INT8.

    Example: ``layer_precisions(p)["Convolution"]`` -> ``{"u8": 11}`` for an NNCF INT8 model.
    """
    counts: dict[str, dict[str, int]] = {}
    for op in predictor.compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        precision = info["runtimePrecision"].astype(str)
        counts.setdefault(layer, {}).setdefault(precision, 0)
        counts[layer][precision] += 1
    return counts


__all__ = [
    "NATIVE_BF16_FLAGS",
    "OPENVINO_PRECISIONS",
    "OpenVinoPredictor",
    "OpenVinoSettings",
    "compile_config",
    "describe_settings",
    "layer_precisions",
    "machine_cpu_flags",
    "native_bf16_problem",
    "openvino_problem",
    "usable_cores",
]
