"""Fold BatchNorm3d into the preceding Conv3d for inference and quantization.

In eval mode a batch norm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one conv
with rescaled weights and a shifted bias. Folding removes the norm's memory traffic and lets
INT8 quantization see a single conv per block.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgepanc.networks.blocks import ConvNormAct


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every Conv3d -> BatchNorm3d pair merged.

    Pairs are found in :class:`ConvNormAct` blocks (``conv`` then ``norm``) and as consecutive
    children of an ``nn.Sequential``; each folded norm is replaced by ``nn.Identity`` so the
    module tree keeps its names. Instance norms are left alone: they depend on the input.
    The input model is not modified.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvNormAct):
            _fold_pair(module, "conv", "norm")
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for conv_name, norm_name in zip(names[:-1], names[1:], strict=True):
                _fold_pair(module, conv_name, norm_name)
    return folded


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm3d layers left in ``model`` (0 after a complete fold)."""
    return sum(isinstance(m, nn.BatchNorm3d) for m in model.modules())


def _fold_pair(parent: nn.Module, conv_name: str, norm_name: str) -> None:
    conv = getattr(parent, conv_name)
    norm = getattr(parent, norm_name)
    if not (isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d)):
        return
    if norm.running_mean is None or norm.running_var is None:
        # Without running statistics the norm uses batch statistics even in eval mode.
        raise ValueError(f"cannot fold {norm_name}: BatchNorm3d has no running statistics")
    setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
    setattr(parent, norm_name, nn.Identity())
