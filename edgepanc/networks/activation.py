"""The activation footprint of a network: bytes of intermediate tensors per input voxel.

A property of the architecture, not of the weights or the hardware: the bundle records it when
it is written (``model.json``: ``activation_bytes_per_voxel``) and ``edgepanc run`` plans its
memory budget with it (:mod:`edgepanc.runtime.budget`) without importing torch. Importing this
module does not import torch either; measuring does.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

from edgepanc.networks.config import UNetConfig


def network_activation_bytes_per_voxel(network: UNetConfig, patch_size: Sequence[int]) -> float:
    """:func:`measure_activation_bytes_per_voxel` of a fresh ``network`` on a small probe.

    Activations do not depend on the weights, so an untrained copy is measured; the probe is the
    patch capped at two multiples of the network's divisor on each axis (enough for every stage
    to have a spatial extent, small enough to take milliseconds). Bundles store the result
    (``model.json``: ``activation_bytes_per_voxel``) so that the runtime need not import torch.

    Example: ``network_activation_bytes_per_voxel(PRESETS["tiny"], (32, 32, 32))`` -> ``73.0``
    (bytes per input voxel).
    """
    from edgepanc.networks.presets import build_network

    probe = tuple(min(int(p), 2 * network.min_divisor) for p in patch_size)
    return measure_activation_bytes_per_voxel(build_network(network).eval(), probe)


def measure_activation_bytes_per_voxel(model: object, probe_size: Sequence[int]) -> float:
    """Peak bytes of intermediate tensors alive at once during one forward pass, per voxel.

    Forward hooks register every module's output; a weak-reference finaliser subtracts a
    tensor's bytes when it is freed, so the running total follows what inference actually keeps
    (skip connections, decoder outputs) rather than the sum of everything ever produced.

    Example: ``measure_activation_bytes_per_voxel(build_network("tiny").eval(), (32, 32, 32))``.
    """
    import torch
    from torch import nn

    assert isinstance(model, nn.Module)
    live = 0
    peak = 0
    seen: set[int] = set()

    def release(key: int, n_bytes: int) -> None:
        nonlocal live
        live -= n_bytes
        seen.discard(key)

    def track(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal live, peak
        tensors = output if isinstance(output, tuple | list) else (output,)
        for tensor in tensors:
            if not isinstance(tensor, torch.Tensor):
                continue
            key = tensor.untyped_storage().data_ptr()
            if key in seen:  # in-place ops and views share the storage already counted
                continue
            n_bytes = tensor.untyped_storage().nbytes()
            seen.add(key)
            live += n_bytes
            weakref.finalize(tensor, release, key, n_bytes)
        peak = max(peak, live)

    handles = [m.register_forward_hook(track) for m in model.modules() if m is not model]
    try:
        parameter = next(model.parameters())
        probe = torch.zeros((1, 1, *probe_size), dtype=torch.float32, device=parameter.device)
        with torch.inference_mode():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return peak / math.prod(probe_size)


__all__ = ["measure_activation_bytes_per_voxel", "network_activation_bytes_per_voxel"]
