"""``edgepanc quantize``: from a trained bundle to a quantized bundle with measured variants.

The stages (``edgepanc/quantization/stages/``), in order, over one context:

1. inputs: every input checked before any work; calibration (training) and validation cases
   prepared once;
2. fp32: the reference (PyTorch) and the fp32 ONNX export, checked against PyTorch;
3. INT8: activation type and layer placement measured on this CPU, post-training quantization
   (calibration method chosen by validation accuracy), quantization-aware training;
4. TensorRT: fp16 and INT8 engines where TensorRT and a GPU exist; OpenVINO: the fp32 export
   computed in bf16 (native bf16 only) and NNCF INT8, where OpenVINO and NNCF are installed;
5. pruning: the pruned, fine-tuned network, exported and quantized like the full one;
6. assembly: every variant timed per patch through the runtime's backends, the default chosen,
   the report and ``model.json`` written.

Every variant is scored on the validation cases with the training stage's scoring. The new
bundle is assembled in a hidden staging folder beside ``--out`` and renamed into place at the
end, so a failure leaves nothing behind; the input bundle is only read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from edgepanc.bundle import ModelBundle
from edgepanc.quantization.config import QuantizeConfig
from edgepanc.quantization.stages import fp32, int8, pruning, tensorrt
from edgepanc.quantization.stages.assembly import assemble
from edgepanc.quantization.stages.context import QuantizeContext
from edgepanc.quantization.stages.inputs import check_inputs, make_context
from edgepanc.quantization.stages.openvino import build_openvino

ALL_CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def run_quantize(config: QuantizeConfig) -> ModelBundle:
    """Build the quantized bundle at ``config.out``; nothing is left there if anything fails."""
    inputs = check_inputs(config)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{config.out.name}.", suffix=".staging", dir=config.out.parent)
    )
    try:
        torch.manual_seed(config.seed)
        bundle = compress(make_context(config, inputs, staging))
        if config.out.exists():
            config.out.rmdir()  # checked empty above; rename cannot replace a folder otherwise
        # mkdtemp made the staging folder private; the bundle gets the usual folder permissions.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        os.replace(staging, config.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    bundle.path = config.out
    return bundle


def compress(ctx: QuantizeContext) -> ModelBundle:
    """Run the stages into ``ctx.staging``; return the new bundle (written there)."""
    config = ctx.config
    methods = (
        ALL_CALIBRATION_METHODS
        if config.calibration_method == "auto"
        else (config.calibration_method,)
    )
    method = methods[0]  # the calibration of QAT, TensorRT and the pruned INT8 unless PTQ chooses
    activation_type: str | None = None  # chosen on this CPU when INT8 is asked for
    model = fp32.reference(ctx)
    if {"onnx", "int8", "tensorrt", "openvino"} & set(config.export):
        exported, fp32_onnx = fp32.export(ctx, model)
        if config.wants_int8:
            activation_type, layers = int8.choose_activation_type(ctx, fp32_onnx)
            if config.wants_ptq:
                method = int8.post_training(
                    ctx, fp32_onnx, exported, methods, activation_type, layers
                )
            if config.wants_qat:
                int8.quantization_aware(ctx, model, method, activation_type, layers)
        if "tensorrt" in config.export:
            tensorrt.build_engines(ctx, fp32_onnx, exported, method)
        if "openvino" in config.export:
            build_openvino(ctx, fp32_onnx, exported)
    pruned_network = None
    if config.prune is not None:
        small = pruning.prune(ctx, model, config.prune)
        pruned_network = small.config
        if {"onnx", "int8"} & set(config.export):
            small_exported, small_onnx = fp32.export(ctx, small, pruned=True)
            if activation_type is not None:  # set exactly when config.wants_int8
                layers = int8.place_layers(ctx, small_onnx, activation_type)
                int8.post_training(
                    ctx, small_onnx, small_exported, (method,), activation_type, layers, pruned=True
                )
    return assemble(ctx, activation_type, pruned_network)
