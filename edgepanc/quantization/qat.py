"""Quantization-aware training with PyTorch fake quantization, exported through ONNX QDQ.

What this does, plainly: during a few fine-tuning epochs every Conv3d, ConvTranspose3d and
Linear sees its weight fake-quantized to symmetric INT8 per output channel and its input
fake-quantized to unsigned INT8 per tensor (:mod:`torch.ao.quantization` FakeQuantize modules
with moving-average min/max observers and the straight-through estimator). That is where ONNX
Runtime's QDQ quantizer puts its QuantizeLinear/DequantizeLinear pairs, so the weights learn to
live with the same rounding. After training the fake quantization is removed, the learned fp32
weights are exported to ONNX and quantized with :func:`edgepanc.quantization.ptq.quantize_int8`, whose
calibration sets the final activation ranges.

Why not PT2E (``prepare_qat_pt2e``) or FX (``prepare_qat_fx``): torch 2.13 no longer ships
``torch.ao.quantization.quantize_pt2e`` (it moved to torchao, not installed), and FX symbolic
tracing cannot follow the network's Python-side input shape check; neither would give an ONNX
QDQ graph that ONNX Runtime runs without a second conversion anyway.

Batch norm: per-channel symmetric weight quantization is invariant to a positive or negative
per-output-channel scale, so fake-quantizing the raw conv weight is exactly what quantizing the
folded weight later does; the norm can stay in the graph while training.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize
from torch.ao.quantization.observer import (
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)
from torch.nn.utils import parametrize

QUANTIZED_LAYERS = (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)


class WeightFakeQuant(nn.Module):
    """A parametrization: the weight as symmetric INT8 per output channel would store it."""

    def __init__(self, channel_axis: int) -> None:
        super().__init__()
        self.fake_quant = FakeQuantize(
            observer=MovingAveragePerChannelMinMaxObserver,
            quant_min=-127,  # ONNX Runtime's symmetric INT8 weight range
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=channel_axis,
        )

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.fake_quant(weight)


def activation_fake_quant() -> FakeQuantize:
    """Unsigned INT8 per-tensor fake quantization of a layer input."""
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )


@dataclass
class FakeQuantState:
    """What :func:`insert_fake_quant` added, so :func:`remove_fake_quant` can take it out."""

    layers: list[nn.Module] = field(default_factory=list)
    hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)


def insert_fake_quant(model: nn.Module, skip: Collection[str] = ()) -> FakeQuantState:
    """Add weight and input fake quantization to every quantized layer of ``model`` in place.

    ``skip`` names modules (as ``model.named_modules()`` does) that will stay fp32 in the
    deployed model, so they train without rounding. The layers keep their Parameter objects
    (parametrizations wrap them), so an optimiser built before the call still updates them.
    """
    state = FakeQuantState()
    skipped = set(skip)
    layers = [
        m
        for name, m in model.named_modules()
        if isinstance(m, QUANTIZED_LAYERS) and name not in skipped
    ]
    for layer in layers:
        # ConvTranspose weights are [in, out, ...]: the output channel is axis 1.
        axis = 1 if isinstance(layer, nn.ConvTranspose3d) else 0
        parametrize.register_parametrization(layer, "weight", WeightFakeQuant(axis))
        layer.input_fake_quant = activation_fake_quant()
        state.hooks.append(layer.register_forward_pre_hook(_quantize_input))
        state.layers.append(layer)
    return state


def remove_fake_quant(state: FakeQuantState) -> None:
    """Take the fake quantization out again, keeping the trained fp32 weights."""
    for hook in state.hooks:
        hook.remove()
    for layer in state.layers:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        del layer.input_fake_quant
    state.hooks.clear()
    state.layers.clear()


def learned_input_ranges(state: FakeQuantState) -> list[tuple[float, float]]:
    """The (min, max) each layer's input observer settled on (for the report)."""
    ranges = []
    for layer in state.layers:
        observer = layer.input_fake_quant.activation_post_process
        ranges.append((float(observer.min_val), float(observer.max_val)))
    return ranges


def _quantize_input(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (layer.input_fake_quant(inputs[0]), *inputs[1:])
