"""Building blocks of the multi-task UNet: Conv-Norm-LeakyReLU and stacks of them.

Every convolution sits in a :class:`ConvNormAct` with the attributes ``conv``, ``norm`` and
``act``, so that batch-norm folding and structured channel pruning can find a conv and the norm
that follows it by name instead of by position.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from edgepanc.networks.config import NORM_KINDS

NormKind = Literal["instance", "batch"]

# nnU-Net's choice: a small negative slope keeps gradients alive for negative activations.
LEAKY_SLOPE = 0.01


class InstanceNorm(nn.InstanceNorm3d):
    """Instance normalisation that keeps a CPU tensor's memory format.

    On the CPU it computes the same statistics as a group norm with one group per channel:
    ``instance_norm`` returns a channels-last input in the contiguous format, so every
    convolution after it reorders the layout again, and those copies, not the arithmetic,
    made up about a sixth of a CPU training step. Elsewhere, and in an ONNX export (which
    keeps one ``InstanceNormalization`` node), it is :class:`torch.nn.InstanceNorm3d`; the
    state dict is the same either way.

    Example::

        >>> norm = InstanceNorm(8, affine=True)
        >>> x = torch.randn(2, 8, 4, 8, 8).contiguous(memory_format=torch.channels_last_3d)
        >>> norm(x).is_contiguous(memory_format=torch.channels_last_3d)
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.device.type != "cpu" or self.track_running_stats or _exporting():
            return super().forward(x)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def make_norm(kind: str, channels: int) -> nn.Module:
    """Return the normalisation layer named ``kind`` for ``channels`` feature maps."""
    if kind == "instance":
        # affine=True: a learned scale and shift per channel, as nnU-Net uses.
        return InstanceNorm(channels, eps=1e-5, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels, eps=1e-5)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORM_KINDS}")


class ConvNormAct(nn.Module):
    """Conv3d -> norm -> (Dropout3d) -> LeakyReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=True,
        )
        self.norm = make_norm(norm, out_channels)
        # Identity when unused keeps the module tree (and state_dict keys) the same for all configs.
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dropout(self.norm(self.conv(x))))


class ConvStage(nn.Module):
    """``num_convs`` ConvNormAct blocks; only the first one may downsample (``stride``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_convs: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"a stage needs at least one conv, got {num_convs}")
        self.blocks = nn.ModuleList(
            ConvNormAct(
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride if i == 0 else 1,
                norm=norm,
                dropout=dropout,
            )
            for i in range(num_convs)
        )

    @property
    def out_channels(self) -> int:
        return self.blocks[-1].conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
