"""TensorRT predictor: a compiled engine built by the compression stage, on an NVIDIA GPU.

Two kinds of file load here:

- ``.ep`` / ``.ts``: a torch_tensorrt compiled module saved with ``torch_tensorrt.save``
  (ExportedProgram or TorchScript); called like the network.
- ``.engine`` / ``.plan``: a serialized TensorRT engine with the input ``image`` and the outputs
  ``seg_logits``, ``cls_logits``; executed through the TensorRT runtime on torch CUDA buffers.

Nothing is imported until a predictor is built: on a machine without torch_tensorrt (or without a
GPU) constructing one raises :class:`~edgepanc.backends.base.BackendUnavailable` and importing
this module costs nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edgepanc.backends import devices
from edgepanc.backends.base import (
    CLS_OUTPUT_NAME,
    INPUT_NAME,
    SEG_OUTPUT_NAME,
    BackendUnavailable,
    check_batch,
)
from edgepanc.errors import InputError

PROGRAM_SUFFIXES = (".ep", ".ts")
ENGINE_SUFFIXES = (".engine", ".plan")


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot run here, or None when it can (without importing torch_tensorrt)."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch_tensorrt is not installed (pip install 'edgepanc[gpu]' on a CUDA machine)"
    if not devices.cuda_available():
        return "TensorRT needs an NVIDIA GPU and torch sees no CUDA device"
    return None


def _import_torch_tensorrt() -> Any:
    problem = tensorrt_problem()
    if problem is not None:
        raise BackendUnavailable(problem)
    import torch_tensorrt

    return torch_tensorrt


class TensorRTPredictor:
    """Run a TensorRT-compiled network on the GPU; outputs come back as float32 numpy.

    ``precision`` is what the engine was built for, as the bundle records it.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(
        self, path: str | Path, precision: str = "fp16", artifact: str | None = None
    ) -> None:
        torch_tensorrt = _import_torch_tensorrt()
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "TensorRT file not found")
        suffix = path.suffix.lower()
        if suffix in PROGRAM_SUFFIXES:
            self._run = _program_runner(torch_tensorrt, path)
        elif suffix in ENGINE_SUFFIXES:
            self._run = _engine_runner(path)
        else:
            raise InputError(
                path,
                f"unknown TensorRT file type; expected one of {PROGRAM_SUFFIXES + ENGINE_SUFFIXES}",
            )
        self.path = path
        self.precision = precision
        self.artifact = artifact

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        inputs = torch.from_numpy(check_batch(batch)).to("cuda", non_blocking=True)
        with torch.inference_mode():
            seg, cls = self._run(inputs)
        return (
            seg.to(device="cpu", dtype=torch.float32).numpy(),
            cls.to(device="cpu", dtype=torch.float32).numpy(),
        )

    def __repr__(self) -> str:
        return f"TensorRTPredictor({str(self.path)!r}, precision={self.precision!r})"


def _program_runner(torch_tensorrt: Any, path: Path) -> Any:
    import torch

    try:
        loaded = torch_tensorrt.load(str(path))
    except Exception as exc:
        raise InputError(path, f"torch_tensorrt cannot load it: {exc}") from exc
    module = loaded.module() if hasattr(loaded, "module") else loaded

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg, cls = module(inputs)
        return seg, cls

    return run


def _engine_runner(path: Path) -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("the tensorrt Python package is not installed") from exc
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise InputError(
            path,
            "TensorRT cannot deserialize the engine (built for another GPU or TensorRT version?)",
        )
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    expected = {INPUT_NAME, SEG_OUTPUT_NAME, CLS_OUTPUT_NAME}
    if not expected <= names:
        raise InputError(path, f"engine tensors {sorted(names)} lack {sorted(expected - names)}")
    context = engine.create_execution_context()
    dtypes = {
        name: torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
        for name in expected
    }

    def run(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = inputs.to(dtypes[INPUT_NAME]).contiguous()
        context.set_input_shape(INPUT_NAME, tuple(inputs.shape))
        context.set_tensor_address(INPUT_NAME, inputs.data_ptr())
        outputs = {}
        for name in (SEG_OUTPUT_NAME, CLS_OUTPUT_NAME):
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=dtypes[name], device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{path}: TensorRT execution failed")
        stream.synchronize()
        return outputs[SEG_OUTPUT_NAME], outputs[CLS_OUTPUT_NAME]

    return run


__all__ = ["TensorRTPredictor", "tensorrt_problem"]
