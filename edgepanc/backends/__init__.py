"""Inference backends behind one :class:`Predictor` interface: torch, ONNX Runtime, TensorRT.

Backend classes are imported on first use so that importing the interface (as the inferers do)
does not pull in torch, onnxruntime or torch_tensorrt.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgepanc.backends.base import (
    BACKENDS,
    DEVICES,
    PRECISIONS,
    BackendUnavailable,
    Predictor,
)
from edgepanc.backends.devices import cuda_available, resolve_device, torch_device

_LAZY = {
    "TorchPredictor": "edgepanc.backends.torch_backend",
    "OnnxRuntimePredictor": "edgepanc.backends.onnxruntime_backend",
    "OpenVinoPredictor": "edgepanc.backends.openvino_backend",
    "TensorRTPredictor": "edgepanc.backends.tensorrt_backend",
    "available_backends": "edgepanc.backends.selection",
    "choose_backend": "edgepanc.backends.selection",
    "select_predictor": "edgepanc.backends.selection",
    "BackendChoice": "edgepanc.backends.selection",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "DEVICES",
    "PRECISIONS",
    "BackendChoice",
    "BackendUnavailable",
    "OnnxRuntimePredictor",
    "OpenVinoPredictor",
    "Predictor",
    "TensorRTPredictor",
    "TorchPredictor",
    "available_backends",
    "choose_backend",
    "cuda_available",
    "resolve_device",
    "select_predictor",
    "torch_device",
]
