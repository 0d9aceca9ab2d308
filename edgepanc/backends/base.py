"""The one interface every inference backend offers: :class:`Predictor`.

A predictor maps a batch of preprocessed tiles to segmentation and classification logits, always
as float32 numpy arrays, whatever runs underneath (eager torch, ONNX Runtime, TensorRT) and
whatever precision it computes in. The sliding-window inferers only ever see this interface.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from edgepanc.errors import EdgepancError

# Names fixed for every exported graph (the quant stage exports with these).
INPUT_NAME = "image"
SEG_OUTPUT_NAME = "seg_logits"
CLS_OUTPUT_NAME = "cls_logits"

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
DEVICES: tuple[str, ...] = ("cpu", "cuda")


class BackendUnavailable(EdgepancError):
    """The requested backend, device or precision cannot run on this machine."""


@runtime_checkable
class Predictor(Protocol):
    """``predictor(batch [B, 1, D, H, W] float32) -> (seg [B, C, D, H, W], cls [B, S])``, float32.

    ``name`` is the backend ("torch", "onnxruntime", "openvino", "tensorrt"), ``precision`` the
    arithmetic it computes in ("fp32", "bf16", "fp16", "int8") and ``device`` where ("cpu",
    "cuda"). Returned arrays belong to the caller, who may change them in place.
    """

    name: str
    precision: str
    device: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Return ``batch`` as a C-contiguous float32 ``[B, 1, D, H, W]`` array (no copy if it is one)."""
    if batch.ndim != 5 or batch.shape[1] != 1:
        raise ValueError(f"expected a batch [B, 1, D, H, W], got shape {list(batch.shape)}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def writable_float32(array: np.ndarray) -> np.ndarray:
    """``array`` as float32 that the caller may modify (copies only when it must)."""
    array = np.asarray(array, dtype=np.float32)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C")
    return array


__all__ = [
    "BACKENDS",
    "CLS_OUTPUT_NAME",
    "DEVICES",
    "INPUT_NAME",
    "PRECISIONS",
    "SEG_OUTPUT_NAME",
    "BackendUnavailable",
    "Predictor",
    "check_batch",
    "writable_float32",
]
