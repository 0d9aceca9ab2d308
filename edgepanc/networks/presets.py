"""Named network sizes, the network factory, and size/cost measures used to report pruning gains."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from edgepanc.networks.unet import MultiTaskUNet, UNetConfig

PRESETS: dict[str, UNetConfig] = {
    # About 23M parameters (the original model had 22,970,150): 5 downsamplings for GPU patches
    # such as 64x160x160 or 128^3.
    "default": UNetConfig(),
    # Trains on a 2-core CPU: 4 downsamplings for 64^3 or 64x96x96 patches, ~1.4M parameters,
    # ~3.8 GMACs per 64^3 patch. The full-resolution stage dominates the cost, hence only 8
    # channels there: 16 would triple the time of a training step.
    "cpu": UNetConfig(
        features=(8, 16, 32, 64, 128),
        classifier_hidden=32,
        classifier_scales=3,
    ),
    # For tests: a forward pass on 32^3 takes milliseconds.
    "tiny": UNetConfig(
        features=(4, 8, 16),
        classifier_hidden=8,
        classifier_scales=2,
        classifier_dropout=0.0,
    ),
}


def build_network(preset_or_config: str | UNetConfig = "default") -> MultiTaskUNet:
    """Build a fresh :class:`MultiTaskUNet` from a preset name or a :class:`UNetConfig`."""
    if isinstance(preset_or_config, UNetConfig):
        return MultiTaskUNet(preset_or_config)
    try:
        config = PRESETS[preset_or_config]
    except KeyError:
        raise ValueError(
            f"unknown network preset {preset_or_config!r}; choose one of {sorted(PRESETS)}"
        ) from None
    return MultiTaskUNet(config)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def estimate_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of all Conv3d, ConvTranspose3d and Linear layers for one forward pass.

    Counted with forward hooks on a zero input of ``input_shape`` (batch included), so the
    number follows the model as it is, pruned channels and all. Norms, activations and pooling
    are left out: they are a few percent of the total and scale with the convolutions anyway.
    """
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, inputs[0], output)

    handles = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def estimate_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Floating-point operations of one forward pass: ``2 * estimate_macs`` (multiply + add)."""
    return 2 * estimate_macs(model, input_shape)


def _layer_macs(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    if isinstance(module, nn.Conv3d):
        # Every output element is a dot product over (in_channels / groups) x kernel volume.
        return y.numel() * (module.in_channels // module.groups) * prod(module.kernel_size)
    if isinstance(module, nn.ConvTranspose3d):
        # Every input element is scattered into (out_channels / groups) x kernel volume outputs.
        return x.numel() * (module.out_channels // module.groups) * prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return y.numel() * module.in_features
    return 0
