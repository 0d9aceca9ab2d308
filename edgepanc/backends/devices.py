"""Which device the work runs on: the one place that asks whether a CUDA GPU is usable.

Backend selection, the torch predictor, training and the compression stage all resolve
``"auto"``, ``"cpu"`` or ``"cuda"`` through here. Importing this module never imports torch:
the ONNX Runtime path of ``edgepanc run`` on a machine without an NVIDIA GPU must not load it.
"""

from __future__ import annotations

import sys

from edgepanc.backends.base import DEVICES, BackendUnavailable
from edgepanc.extras import installed

DEVICE_CHOICES: tuple[str, ...] = ("auto", *DEVICES)


def nvidia_gpu_present() -> bool:
    """Whether NVML finds an NVIDIA GPU (False without a driver); never imports torch.

    Example: ``nvidia_gpu_present()`` -> ``False`` on a laptop without an NVIDIA driver.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: all mean no usable GPU
        return False


def cuda_available() -> bool:
    """Whether torch can use a CUDA device.

    torch is imported only where NVML finds a GPU or torch is loaded already: importing it costs
    about 260 MB of resident memory, which an ONNX Runtime run on a CPU machine has no use for.

    Example: ``cuda_available()`` -> ``True`` on a machine with a CUDA build of torch and a GPU.
    """
    # A runtime-only install (no torch) runs on ONNX Runtime or OpenVINO even beside a GPU.
    if sys.modules.get("torch") is None and (not installed("torch") or not nvidia_gpu_present()):
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other names are checked.

    An explicit ``"cuda"`` is returned as asked: backends other than torch (ONNX Runtime's CUDA
    provider) decide for themselves whether they can use it.

    Example: ``resolve_device("auto")`` -> ``"cpu"`` on a machine without a GPU.
    """
    if device not in DEVICE_CHOICES:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def torch_device(device: str) -> str:
    """:func:`resolve_device`, and BackendUnavailable when torch is asked for a GPU it cannot see.

    Example: ``torch_device("cuda")`` raises ``BackendUnavailable`` on a CPU-only machine.
    """
    resolved = resolve_device(device)
    if resolved == "cuda" and not cuda_available():
        raise BackendUnavailable("device 'cuda' requested but torch sees no CUDA device")
    return resolved


__all__ = [
    "DEVICE_CHOICES",
    "cuda_available",
    "nvidia_gpu_present",
    "resolve_device",
    "torch_device",
]
