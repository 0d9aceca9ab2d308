"""INT8: what to quantize, measured on this CPU; post-training quantization; QAT.

The activation type (unsigned or signed INT8) is the faster of the two on this CPU, and each
fp32 graph's layers run INT8 only where their INT8 kernel is faster
(:mod:`edgepanc.quantization.int8_placement`), both timed here, because which wins depends on the
CPU's integer instructions. Post-training quantization tries the calibration methods and keeps
the one that scores best on the validation cases; quantization-aware training fine-tunes with
fake quantization and quantizes the learned weights the same way.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor
from edgepanc.metrics import combined_score
from edgepanc.networks import MultiTaskUNet
from edgepanc.quantization.evaluate_variants import KEY_METRICS
from edgepanc.quantization.finetune import finetune_in_run
from edgepanc.quantization.int8_placement import (
    fp32_layers,
    layer_timings,
    module_name,
    placement_summary,
)
from edgepanc.quantization.latency import interleaved_latencies
from edgepanc.quantization.onnx_export import export_onnx
from edgepanc.quantization.ptq import ACTIVATION_TYPES, QUANTIZED_OP_TYPES, quantize_int8
from edgepanc.quantization.qat import insert_fake_quant, remove_fake_quant
from edgepanc.quantization.stages.context import QuantizeContext
from edgepanc.quantization.stages.fp32 import deployable
from edgepanc.quantization.stages.measure import discard, measure
from edgepanc.quantization.variants import onnx_int8, onnx_int8_qat

log = logging.getLogger("edgepanc.quantize")


@dataclass(frozen=True)
class LayerPlacement:
    """Which layers of one fp32 graph stay fp32 (``exclude``); the others run INT8."""

    exclude: tuple[str, ...] = ()  # ONNX node names
    summary: str | None = None  # the measured placement in a line; None with --int8-layers all


def choose_activation_type(ctx: QuantizeContext, fp32_onnx: Path) -> tuple[str, LayerPlacement]:
    """Time unsigned and signed INT8 activations on this CPU (in turns) and keep the faster;
    return it with the layer placement of ``fp32_onnx`` (:func:`place_layers`)."""
    with ctx.scratch(".act-") as scratch:
        predictors = {}
        for activation_type in ACTIVATION_TYPES:
            path = scratch / f"{activation_type}.onnx"
            quantize_int8(fp32_onnx, path, ctx.data.patches[:2], "minmax", activation_type)
            predictors[activation_type] = OnnxRuntimePredictor(
                path, ["CPUExecutionProvider"], precision="int8"
            )
        latencies = interleaved_latencies(predictors, ctx.patch_size, ctx.config.latency_runs)
        timings = {name: latency.median_ms for name, latency in latencies.items()}
        chosen = min(timings, key=timings.get)
        ctx.trials["activation_type_ms"] = timings
        log.info("INT8 activations: %s ms per patch; using %s", timings, chosen)
        # the winner is the every-layer INT8 model that the layer placement profiles
        return chosen, place_layers(ctx, fp32_onnx, chosen, scratch / f"{chosen}.onnx")


def place_layers(
    ctx: QuantizeContext, fp32_onnx: Path, activation_type: str, every_layer: Path | None = None
) -> LayerPlacement:
    """The layers of ``fp32_onnx`` to leave in fp32 (none with ``--int8-layers all``).

    ``every_layer`` (a fully quantized copy, made when not given) and the fp32 graph are profiled
    per node on this CPU; every timing goes into the report's trials and placement table.
    """
    if ctx.config.int8_layers == "all":
        return LayerPlacement()
    with ctx.scratch(".place-") as scratch:
        if every_layer is None:
            every_layer = scratch / "every_layer_int8.onnx"
            quantize_int8(fp32_onnx, every_layer, ctx.data.patches[:2], "minmax", activation_type)
        timings = layer_timings(
            fp32_onnx, every_layer, ctx.patch_size, QUANTIZED_OP_TYPES, ctx.config.latency_runs
        )
    excluded = fp32_layers(timings)
    summary = placement_summary(timings, excluded)
    ctx.trials.setdefault("int8_layers", {})[fp32_onnx.name] = {
        "summary": summary,
        "layers": [t.to_dict() for t in timings],
    }
    log.info("%s: %s", fp32_onnx.name, summary)
    return LayerPlacement(tuple(excluded), summary)


def post_training(
    ctx: QuantizeContext,
    fp32_onnx: Path,
    model: nn.Module,
    methods: Sequence[str],
    activation_type: str,
    layers: LayerPlacement,
    pruned: bool = False,
) -> str:
    """INT8 ``fp32_onnx`` with each calibration method; keep the best scoring, return its method.

    Every trial is scored and recorded in the report's trials; only the best one's file stays.
    """
    tried = []
    for method in methods:
        variant = onnx_int8(method, pruned)
        quantize_int8(
            fp32_onnx,
            ctx.path(variant),
            ctx.data.patches,
            method,
            activation_type,
            exclude=layers.exclude,
        )
        tried.append((method, variant, measure(ctx, variant, model)))
    # max keeps the first of equal scores: the order of ``methods`` breaks ties
    best_method, best, best_result = max(tried, key=lambda t: combined_score(t[2].metrics))
    for _, variant, _ in tried:
        if variant != best:
            discard(ctx, variant)
    trials_key = "pruned_onnx_calibration" if pruned else "onnx_calibration"
    ctx.trials[trials_key] = {
        variant.name: {key: result.metrics[key] for key in KEY_METRICS}
        for _, variant, result in tried
    }
    best_result.notes = f"calibration {best_method} (best of {', '.join(methods)})"
    if layers.summary is not None:
        best_result.notes += f"; {layers.summary}"
    return best_method


def quantization_aware(
    ctx: QuantizeContext,
    model: MultiTaskUNet,
    method: str,
    activation_type: str,
    layers: LayerPlacement,
) -> None:
    """``--qat-epochs`` of fine-tuning with fake-quantized weights and inputs, then the learned
    fp32 weights exported and quantized with ``method`` like post-training quantization."""
    epochs = ctx.config.qat_epochs
    fake_quant: dict[str, Any] = {}
    # Layers that will run in fp32 train without rounding.
    fp32_modules = {module_name(node) for node in layers.exclude}

    def prepare(live: nn.Module) -> None:
        fake_quant["modules"] = insert_fake_quant(live, skip=fp32_modules)

    tuned = finetune_in_run(ctx, copy.deepcopy(model), epochs, prepare)
    if "modules" in fake_quant:  # absent when there were no epochs to train
        remove_fake_quant(fake_quant["modules"])
    variant = onnx_int8_qat(method)
    with ctx.scratch(".qat-") as scratch:
        fp32 = export_onnx(deployable(tuned), scratch / "qat_fp32.onnx", ctx.patch_size)
        quantize_int8(
            fp32,
            ctx.path(variant),
            ctx.data.patches,
            method,
            activation_type,
            exclude=layers.exclude,
        )
    notes = (
        f"{epochs} QAT epochs with fake-quantized weights and inputs, then "
        f"{method} calibration of the learned fp32 weights"
    )
    if layers.exclude:
        notes += f"; the same {len(layers.exclude)} layers as PTQ left in fp32"
    measure(ctx, variant, tuned, notes)
