"""What a compressed variant is, as a typed record: kind, backend, precision, pruned, file.

A variant's artifact name (``onnx_int8_minmax``, ``pruned_torch_fp32``, ...) and its file in the
bundle follow from these fields; nothing reads them back out of a name. The record is written
into the bundle's ``model.json`` beside the measurements (:meth:`Variant.to_record`) and read
back with :meth:`Variant.from_record`. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgepanc.bundle import WEIGHTS_FILE

# How a variant is made, and the backend that runs it: PyTorch weights (the source's or the
# pruned network's), the fp32 ONNX export, INT8 ONNX by post-training quantization or after
# quantization-aware training, a TensorRT engine, the fp32 ONNX export computed in bf16 by
# OpenVINO (no file of its own), an OpenVINO IR quantized to INT8 by NNCF.
KIND_BACKENDS: dict[str, str] = {
    "weights": "torch",
    "onnx": "onnxruntime",
    "ptq": "onnxruntime",
    "qat": "onnxruntime",
    "engine": "tensorrt",
    "onnx_bf16": "openvino",
    "nncf": "openvino",
}
KIND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "weights": ("fp32",),
    "onnx": ("fp32",),
    "ptq": ("int8",),
    "qat": ("int8",),
    "engine": ("fp16", "int8"),
    "onnx_bf16": ("bf16",),
    "nncf": ("int8",),
}
# Kinds that run another variant's file (in another arithmetic) rather than a file of their own.
SHARED_FILE_KINDS: tuple[str, ...] = ("onnx_bf16",)
# The artifact name of each kind (before the ``pruned_`` prefix); these names are the bundle's.
_NAMES: dict[str, str] = {
    "weights": "torch_fp32",
    "onnx": "onnx_fp32",
    "ptq": "onnx_int8_{calibration}",
    "qat": "onnx_int8_qat",
    "engine": "tensorrt_{precision}",
    "onnx_bf16": "openvino_bf16",
    "nncf": "openvino_int8",
}
_INT8_ONNX = ("ptq", "qat")


@dataclass(frozen=True)
class Variant:
    """One variant of the model, as the compression stage builds it and the bundle records it."""

    kind: str  # a key of KIND_BACKENDS
    backend: str  # torch, onnxruntime or tensorrt
    precision: str  # fp32, fp16 or int8
    file: str  # its path inside the bundle
    pruned: bool = False  # made from the channel-pruned network
    calibration: str | None = None  # INT8 ONNX only: the calibration method of its ranges

    def __post_init__(self) -> None:
        if self.kind not in KIND_BACKENDS:
            raise ValueError(
                f"unknown variant kind {self.kind!r}; choose from {list(KIND_BACKENDS)}"
            )
        if self.backend != KIND_BACKENDS[self.kind]:
            raise ValueError(
                f"a {self.kind} variant runs on {KIND_BACKENDS[self.kind]}, not {self.backend}"
            )
        if self.precision not in KIND_PRECISIONS[self.kind]:
            raise ValueError(f"a {self.kind} variant cannot be {self.precision}")
        if (self.calibration is not None) != (self.kind in _INT8_ONNX):
            raise ValueError(f"a calibration method belongs to INT8 ONNX variants, not {self.kind}")
        if not self.file:
            raise ValueError("a variant needs its file inside the bundle")

    @property
    def name(self) -> str:
        """The artifact name in ``model.json`` and the report, built from the fields."""
        stem = _NAMES[self.kind].format(calibration=self.calibration, precision=self.precision)
        return f"pruned_{stem}" if self.pruned else stem

    @property
    def owns_file(self) -> bool:
        """False when the file is another variant's (the fp32 ONNX that OpenVINO runs in bf16)."""
        return self.kind not in SHARED_FILE_KINDS

    @property
    def device(self) -> str:
        """Where the artifact runs: TensorRT engines on the GPU they were built for, else the CPU."""
        return "cuda" if self.backend == "tensorrt" else "cpu"

    def to_record(self) -> dict[str, Any]:
        """The variant's fields for its ``model.json`` artifact record."""
        record: dict[str, Any] = {
            "kind": self.kind,
            "backend": self.backend,
            "precision": self.precision,
            "file": self.file,
            "pruned": self.pruned,
        }
        if self.calibration is not None:
            record["calibration"] = self.calibration
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Variant:
        """The variant an artifact record describes (ValueError when it does not say)."""
        missing = [key for key in ("kind", "backend", "precision", "file") if key not in record]
        if missing:
            raise ValueError(
                f"the artifact record has no {', '.join(missing)}: not a variant record"
            )
        return cls(
            kind=record["kind"],
            backend=record["backend"],
            precision=record["precision"],
            file=record["file"],
            pruned=bool(record.get("pruned", False)),
            calibration=record.get("calibration"),
        )


def torch_weights(pruned: bool = False) -> Variant:
    """The fp32 PyTorch weights: the source bundle's, or the pruned, fine-tuned network's."""
    return Variant("weights", "torch", "fp32", "pruned.pt" if pruned else WEIGHTS_FILE, pruned)


def onnx_fp32(pruned: bool = False) -> Variant:
    """The fp32 ONNX export (batch norm folded) that every INT8 and TensorRT variant starts from."""
    return Variant(
        "onnx", "onnxruntime", "fp32", "pruned_fp32.onnx" if pruned else "model_fp32.onnx", pruned
    )


def onnx_int8(calibration: str, pruned: bool = False) -> Variant:
    """INT8 ONNX by post-training quantization with ``calibration`` ranges."""
    stem = "pruned_onnx" if pruned else "onnx"
    return Variant(
        "ptq", "onnxruntime", "int8", f"{stem}_int8_{calibration}.onnx", pruned, calibration
    )


def onnx_int8_qat(calibration: str) -> Variant:
    """INT8 ONNX after quantization-aware training, its ranges calibrated with ``calibration``."""
    return Variant("qat", "onnxruntime", "int8", "model_int8_qat.onnx", calibration=calibration)


def tensorrt_engine(precision: str) -> Variant:
    """A TensorRT engine in ``precision`` (fp16 or int8) built from the fp32 ONNX export."""
    return Variant("engine", "tensorrt", precision, f"model_{precision}.engine")


def openvino_bf16(pruned: bool = False) -> Variant:
    """The fp32 ONNX export run by OpenVINO in bf16: its record names the fp32 file, and
    ``precision`` bf16 is the arithmetic OpenVINO is told to compute that file in."""
    return Variant("onnx_bf16", "openvino", "bf16", onnx_fp32(pruned).file, pruned)


def openvino_int8(pruned: bool = False) -> Variant:
    """The fp32 ONNX export quantized to INT8 by NNCF, an OpenVINO IR (``.xml`` with a ``.bin``)."""
    stem = "pruned" if pruned else "model"
    return Variant("nncf", "openvino", "int8", f"{stem}_int8_openvino.xml", pruned)


# Every variant is judged against this one: the source bundle's fp32 weights run by PyTorch.
REFERENCE = torch_weights()
