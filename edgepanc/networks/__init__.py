"""The multi-task UNet, its presets, and helpers to size, count and fold it.

:class:`UNetConfig` is plain data and imported at once; everything built on torch is imported
on first use (PEP 562), so that code which only reads a bundle's architecture -- the ONNX
Runtime path of ``edgepanc run`` -- never loads torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgepanc.networks.config import UNetConfig

if TYPE_CHECKING:
    from edgepanc.networks.activation import (
        measure_activation_bytes_per_voxel,
        network_activation_bytes_per_voxel,
    )
    from edgepanc.networks.batchnorm_folding import count_batchnorms, fold_batchnorm
    from edgepanc.networks.blocks import ConvNormAct, ConvStage
    from edgepanc.networks.presets import (
        PRESETS,
        build_network,
        count_parameters,
        estimate_flops,
        estimate_macs,
    )
    from edgepanc.networks.unet import MultiTaskUNet, check_input_shape

_LAZY = {
    "measure_activation_bytes_per_voxel": "activation",
    "network_activation_bytes_per_voxel": "activation",
    "count_batchnorms": "batchnorm_folding",
    "fold_batchnorm": "batchnorm_folding",
    "ConvNormAct": "blocks",
    "ConvStage": "blocks",
    "PRESETS": "presets",
    "build_network": "presets",
    "count_parameters": "presets",
    "estimate_flops": "presets",
    "estimate_macs": "presets",
    "MultiTaskUNet": "unet",
    "check_input_shape": "unet",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
    "measure_activation_bytes_per_voxel",
    "network_activation_bytes_per_voxel",
]
