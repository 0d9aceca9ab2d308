"""TensorRT: fp16 and INT8 engines from the fp32 ONNX export, where TensorRT and a GPU exist.

Without them the stage is skipped with a note in the report. The INT8 engine is built from a
copy quantized with symmetric signed activations, which TensorRT's explicit quantization needs
(:mod:`edgepanc.quantization.tensorrt`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from edgepanc.quantization.ptq import quantize_int8
from edgepanc.quantization.stages.context import QuantizeContext
from edgepanc.quantization.stages.measure import measure
from edgepanc.quantization.tensorrt import build_engine, tensorrt_skip_reason
from edgepanc.quantization.variants import tensorrt_engine

log = logging.getLogger("edgepanc.quantize")

ENGINE_PRECISIONS = ("fp16", "int8")


def build_engines(ctx: QuantizeContext, fp32_onnx: Path, model: nn.Module, method: str) -> None:
    """Build, stage and measure the fp16 and INT8 engines (INT8 calibrated with ``method``)."""
    reason = tensorrt_skip_reason()
    if reason is not None:
        ctx.notes.append(f"skipped TensorRT: {reason}")
        log.info("skipped TensorRT: %s", reason)
        return
    fp16, int8 = (tensorrt_engine(precision) for precision in ENGINE_PRECISIONS)
    build_engine(fp32_onnx, ctx.path(fp16), ctx.patch_size, "fp16")
    with ctx.scratch(".sym-") as scratch:
        symmetric = scratch / "symmetric_int8.onnx"
        quantize_int8(
            fp32_onnx, symmetric, ctx.data.patches, method, "qint8", symmetric_activations=True
        )
        build_engine(symmetric, ctx.path(int8), ctx.patch_size, "int8")
    for variant in (fp16, int8):
        measure(ctx, variant, model)
