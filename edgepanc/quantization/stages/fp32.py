"""fp32: the reference (the source weights run by PyTorch) and the fp32 ONNX export.

The export is what every INT8 and TensorRT variant starts from; it is checked against PyTorch
on random and on real validation patches, and the agreement goes into the report's trials.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import numpy as np
from torch import nn

from edgepanc.networks import MultiTaskUNet, count_batchnorms, fold_batchnorm
from edgepanc.quantization.onnx_export import compare_with_torch, export_onnx
from edgepanc.quantization.stages.context import QuantizeContext
from edgepanc.quantization.stages.measure import measure
from edgepanc.quantization.variants import REFERENCE, onnx_fp32

log = logging.getLogger("edgepanc.quantize")


def reference(ctx: QuantizeContext) -> MultiTaskUNet:
    """Copy the source weights into the new bundle and measure them; return the network."""
    model = ctx.source.load_network()
    shutil.copyfile(ctx.source.weights_path, ctx.path(REFERENCE))
    measure(ctx, REFERENCE, model)
    return model


def deployable(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with batch norm (if any) folded into the convolutions."""
    return fold_batchnorm(model) if count_batchnorms(model) else copy.deepcopy(model).eval()


def export(
    ctx: QuantizeContext, model: MultiTaskUNet, pruned: bool = False
) -> tuple[nn.Module, Path]:
    """Export ``model`` (the pruned network when ``pruned``) to fp32 ONNX, check it against
    PyTorch and measure it; return the exported network and the ONNX file."""
    variant = onnx_fp32(pruned)
    exported = deployable(model)
    path = export_onnx(exported, ctx.path(variant), ctx.patch_size)
    random_patches = np.random.default_rng(ctx.config.seed).standard_normal(
        (2, 1, *ctx.patch_size), dtype=np.float32
    )
    agreement = {
        "random": compare_with_torch(model, path, random_patches).to_dict(),
        "validation": compare_with_torch(model, path, ctx.data.validation_patches).to_dict(),
    }
    ctx.trials.setdefault("onnx_vs_torch", {})[variant.file] = agreement
    log.info("%s vs PyTorch: %s", variant.file, agreement)
    measure(ctx, variant, exported)
    return exported, path
