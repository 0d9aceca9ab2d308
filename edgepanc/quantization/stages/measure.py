"""The one place a variant's result is built, and the latency timing of every kept variant.

:func:`measure` takes a variant whose file is in the staged bundle: its size, parameters and
FLOPs, a predictor from the runtime's backends, and its validation accuracy scored as training
scores the fp32 model. Latency comes last (:func:`time_variants`), every kept variant timed in
turns, so that a loaded machine slows them alike.
"""

from __future__ import annotations

import logging

from torch import nn

from edgepanc.backends.base import Predictor
from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor
from edgepanc.backends.openvino_backend import OpenVinoPredictor
from edgepanc.backends.tensorrt_backend import TensorRTPredictor
from edgepanc.backends.torch_backend import TorchPredictor
from edgepanc.networks import count_parameters, estimate_flops
from edgepanc.quantization.evaluate_variants import evaluate_predictor
from edgepanc.quantization.latency import interleaved_latencies
from edgepanc.quantization.report import VariantResult
from edgepanc.quantization.stages.context import Measured, QuantizeContext
from edgepanc.quantization.variants import Variant

log = logging.getLogger("edgepanc.quantize")


def measure(
    ctx: QuantizeContext, variant: Variant, model: nn.Module, notes: str = ""
) -> VariantResult:
    """Score ``variant`` (its file already staged; ``model`` the network it was made from) and
    keep it in the run; latency is filled in by :func:`time_variants`."""
    result = VariantResult(
        variant.name,
        variant.backend,
        variant.precision,
        variant.file,
        count_parameters(model),
        estimate_flops(model, (1, 1, *ctx.patch_size)),
        _size_bytes(ctx, variant),
        notes=notes,
    )
    predictor = _predictor(ctx, variant, model)
    result.metrics = evaluate_predictor(predictor, ctx.data.validation_cases, ctx.patch_size)
    log.info(
        "%s: whole DSC %.4f, lesion DSC %.4f, macro F1 %.4f",
        variant.name,
        result.metrics["whole_dsc"],
        result.metrics["lesion_dsc"],
        result.metrics["macro_f1"],
    )
    ctx.measured.append(Measured(variant, result, predictor))
    return result


def discard(ctx: QuantizeContext, variant: Variant) -> None:
    """Drop a measured variant from the run and its file from the staged bundle."""
    ctx.measured = [m for m in ctx.measured if m.variant != variant]
    if variant.owns_file:
        ctx.path(variant).unlink()
        ctx.path(variant).with_suffix(".bin").unlink(missing_ok=True)


def time_variants(ctx: QuantizeContext) -> None:
    """Latency per patch of every kept variant, timed in turns (see latency.py)."""
    predictors = {m.variant.name: m.predictor for m in ctx.measured}
    latencies = interleaved_latencies(predictors, ctx.patch_size, ctx.config.latency_runs)
    for kept in ctx.measured:
        kept.result.latency_ms = latencies[kept.variant.name].median_ms
        log.info("%s: %.1f ms/patch", kept.variant.name, kept.result.latency_ms)
    ctx.trials["latency_ms"] = {name: lat.to_dict() for name, lat in latencies.items()}


def _predictor(ctx: QuantizeContext, variant: Variant, model: nn.Module) -> Predictor:
    """The runtime's predictor for ``variant``; everything is scored on the CPU but engines."""
    if variant.backend == "torch":
        return TorchPredictor(model, "cpu", "fp32")
    if variant.backend == "onnxruntime":
        return OnnxRuntimePredictor(
            ctx.path(variant), ["CPUExecutionProvider"], precision=variant.precision
        )
    if variant.backend == "openvino":
        return OpenVinoPredictor(ctx.path(variant), variant.precision, artifact=variant.name)
    return TensorRTPredictor(ctx.path(variant), precision=variant.precision)


def _size_bytes(ctx: QuantizeContext, variant: Variant) -> int:
    """The variant's file, with the weights beside an OpenVINO IR (``.xml`` + ``.bin``)."""
    path = ctx.path(variant)
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (weights.stat().st_size if weights and weights.exists() else 0)
