"""OpenVINO: the fp32 ONNX export computed in bf16, and an NNCF INT8 model, both measured.

bf16 is measured only where the CPU computes it natively (elsewhere OpenVINO emulates it, slower
than fp32); it needs no file of its own, its record names the fp32 ONNX file. The INT8 model is
NNCF post-training quantization calibrated on the same training-case patches as ONNX Runtime's
INT8 (:mod:`edgepanc.quantization.openvino_int8`). Both are scored like every other variant, so
the accuracy tolerance decides whether ``edgepanc run`` may use them. Without OpenVINO or NNCF
the stage is skipped with a note in the report.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from torch import nn

from edgepanc.backends.openvino_backend import (
    machine_cpu_flags,
    native_bf16_problem,
    openvino_problem,
)
from edgepanc.quantization.openvino_int8 import quantize_openvino_int8
from edgepanc.quantization.stages.context import QuantizeContext
from edgepanc.quantization.stages.measure import measure
from edgepanc.quantization.variants import openvino_bf16, openvino_int8

log = logging.getLogger("edgepanc.quantize")


def openvino_skip_reason() -> str | None:
    """Why the OpenVINO variants cannot be built here, or None when they can."""
    problem = openvino_problem()
    if problem is not None:
        return problem
    if importlib.util.find_spec("nncf") is None:
        return "nncf is not installed (pip install nncf)"
    return None


def build_openvino(
    ctx: QuantizeContext, fp32_onnx: Path, model: nn.Module, pruned: bool = False
) -> None:
    """Measure ``fp32_onnx`` in OpenVINO bf16 (native bf16 only) and its NNCF INT8 model.

    ``model`` is the (exported) network both were made from, for parameters and FLOPs.
    """
    reason = openvino_skip_reason()
    if reason is not None:
        ctx.notes.append(f"skipped OpenVINO: {reason}")
        log.info("skipped OpenVINO: %s", reason)
        return
    bf16_problem = native_bf16_problem(machine_cpu_flags())
    if bf16_problem is None:
        measure(ctx, openvino_bf16(pruned), model, f"{fp32_onnx.name} computed in bf16 by OpenVINO")
    else:
        ctx.notes.append(f"no OpenVINO bf16 variant: {bf16_problem}")
    variant = openvino_int8(pruned)
    quantize_openvino_int8(fp32_onnx, ctx.path(variant), ctx.data.patches)
    measure(
        ctx,
        variant,
        model,
        f"NNCF post-training INT8 of {fp32_onnx.name} on {len(ctx.data.patches)} calibration patches",
    )
