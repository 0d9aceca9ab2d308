"""The multi-task 3D UNet, its presets, and helpers to size, count and fold it."""

from edgepanc.networks.batchnorm_folding import count_batchnorms, fold_batchnorm
from edgepanc.networks.blocks import ConvNormAct, ConvStage
from edgepanc.networks.presets import (
    PRESETS,
    build_network,
    count_parameters,
    estimate_flops,
    estimate_macs,
)
from edgepanc.networks.unet import MultiTaskUNet, UNetConfig, check_input_shape

__all__ = [
    "PRESETS",
    "ConvNormAct",
    "ConvStage",
    "MultiTaskUNet",
    "UNetConfig",
    "build_network",
    "check_input_shape",
    "count_batchnorms",
    "count_parameters",
    "estimate_flops",
    "estimate_macs",
    "fold_batchnorm",
]
