"""Eager PyTorch predictor: fp32, or bf16/fp16 through ``torch.amp.autocast``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgepanc.backends.base import check_batch
from edgepanc.backends.devices import torch_device

# Precision name -> torch.amp.autocast dtype (None: plain fp32); validation maps back through it.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class TorchPredictor:
    """Run a :class:`~edgepanc.networks.MultiTaskUNet` (or any module with its outputs) eagerly.

    bf16 and fp16 use autocast, so weights stay fp32 and numerically sensitive layers (norms,
    softmax) keep fp32 where torch's autocast policy says so. The module is moved to ``device``
    and evaluated in eval mode; its previous train/eval mode is restored after every call so the
    training loop can use the predictor for validation on the live model.
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: str = "cpu",
        precision: str = "fp32",
        artifact: str | None = None,
    ) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(
                f"torch precision must be one of {sorted(AUTOCAST_DTYPES)}, got {precision!r}"
            )
        self.device = torch_device(device)
        self.precision = precision
        self.artifact = artifact
        self.model = model.to(self.device)
        self._autocast_dtype = AUTOCAST_DTYPES[precision]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs = torch.from_numpy(check_batch(batch)).to(self.device, non_blocking=True)
        was_training = self.model.training
        self.model.eval()
        try:
            with (
                torch.inference_mode(),
                torch.amp.autocast(
                    device_type=self.device,
                    dtype=self._autocast_dtype,
                    enabled=self._autocast_dtype is not None,
                ),
            ):
                seg, cls = self.model(inputs)
        finally:
            self.model.train(was_training)
        return _to_numpy(seg), _to_numpy(cls)

    def __repr__(self) -> str:
        return f"TorchPredictor(device={self.device!r}, precision={self.precision!r})"


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # .numpy() of a CPU float32 tensor shares its memory: no copy on the fp32 CPU path.
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


__all__ = ["AUTOCAST_DTYPES", "TorchPredictor"]
