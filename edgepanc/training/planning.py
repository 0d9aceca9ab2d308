"""Automatic planning: the data set's fingerprint and the device choose what a recipe leaves open.

Like nnU-Net, the target spacing comes from the training scans' spacings
(:func:`~edgepanc.preprocessing.plan.target_spacing_for`), and the patch, batch and network depth
from the device (:func:`~edgepanc.preprocessing.plan.fit_step_shape`): on a CUDA GPU, what fits
its memory through the network's activation footprint
(:func:`~edgepanc.networks.activation.network_activation_bytes_per_voxel`); on a CPU, what keeps
one training step near ``config.step_seconds``, from the measured time of a step per voxel.
Which values are planned is :attr:`TrainConfig.planned`: the plannable keys that neither the
recipe nor ``--set`` nor a flag pinned.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from edgepanc.preprocessing.plan import (
    StepShape,
    fit_step_shape,
    median_shape_at,
    target_spacing_for,
)
from edgepanc.training.config import TrainConfig

log = logging.getLogger(__name__)

# Training keeps every activation for the backward pass: measured peak GPU memory per voxel of a
# batch over the inference footprint of the `default` network on 64x128x128, batch 2, on an H100
# (2.68 GiB with fp16 AMP, 4.70 GiB in fp32, less its weights and AdamW state:
# docs/measurements/gpu_h100.md).
TRAINING_OVER_INFERENCE = {"amp": 2.0, "fp32": 3.75}
OPTIMIZER_BYTES_PER_PARAMETER = 16  # fp32 weights, gradients and AdamW's two moments
CUDA_CONTEXT_BYTES = 0.5 * 2**30  # the CUDA context and cuDNN's workspace, not in the footprint
GPU_MEMORY_FRACTION = 0.85  # headroom for the allocator's fragmentation
BATCH_SHARE_OF_DATA = 0.05  # nnU-Net: one batch covers at most 5% of the data set's voxels
MIN_PATCH = 32  # voxels per axis: less context than this and the lesion loses its surroundings
MAX_GPU_BATCH = 16


@dataclass(frozen=True)
class Fingerprint:
    """What planning reads of a data set: each training scan's spacing and shape, (z, y, x).

    Example: ``Fingerprint(((2.0, 1.0, 1.0),), ((40, 200, 200),)).target_spacing()`` ->
    ``(2.0, 1.0, 1.0)``.
    """

    spacings: tuple[tuple[float, float, float], ...]
    shapes: tuple[tuple[int, int, int], ...]

    @classmethod
    def of_cases(cls, cases: Iterable[Any]) -> Fingerprint:
        """The headers of the labelled training cases (no voxel is read)."""
        from edgepanc.io.volume import inspect_image
        from edgepanc.preprocessing.orientation import canonical_spacing

        infos = [inspect_image(c.image) for c in cases if c.split == "train" and c.label]
        spacings = tuple(canonical_spacing(i.spacing, i.direction) for i in infos)
        shapes = tuple(tuple(int(v) for v in canonical_spacing(i.size, i.direction)) for i in infos)
        return cls(spacings, shapes)  # type: ignore[arg-type]

    def target_spacing(self) -> tuple[float, float, float]:
        return target_spacing_for(self.spacings)

    def median_shape(self, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
        return median_shape_at(self.shapes, self.spacings, spacing)

    def voxels(self, spacing: tuple[float, float, float]) -> float:
        """All training voxels once resampled to ``spacing``."""
        return float(
            sum(
                math.prod(n * s / t for n, s, t in zip(shape, spaced, spacing, strict=True))
                for shape, spaced in zip(self.shapes, self.spacings, strict=True)
            )
        )


@dataclass(frozen=True)
class Device:
    """What a training step may use: a CUDA GPU's memory, or a CPU's time per voxel of a step.

    Tests script it; :meth:`probe` measures this machine.

    Example: ``Device("cuda", "8 GB GPU", memory_bytes=8e9)``.
    """

    kind: str  # "cuda" or "cpu"
    name: str
    memory_bytes: float | None = None  # CUDA: total GPU memory
    seconds_per_voxel: float | None = None  # CPU: measured seconds of a step per patch voxel

    @classmethod
    def probe(cls, config: TrainConfig) -> Device:
        """This machine's device as ``config.device`` picks it; on a CPU, one step is timed."""
        import torch

        from edgepanc.backends.devices import cuda_available, resolve_device

        if resolve_device(config.device) == "cuda" and cuda_available():
            props = torch.cuda.get_device_properties(0)
            return cls("cuda", props.name, memory_bytes=float(props.total_memory))
        return cls("cpu", "cpu", seconds_per_voxel=_time_cpu_step(config))


def _time_cpu_step(config: TrainConfig) -> float:
    """Seconds per voxel of a forward and backward pass of the preset on a 32x64x64 patch."""
    import torch

    from edgepanc.networks import PRESETS, build_network

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    model = build_network(PRESETS[config.preset]).train()
    patch = torch.zeros((2, 1, 32, 64, 64))
    dtype = torch.bfloat16 if config.amp else None
    times = []
    for _ in range(3):  # the first call pays oneDNN's set-up; the best of the other two counts
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(patch)
        first = outputs
        while not isinstance(first, torch.Tensor):  # (segmentation, subtype), deep supervision
            first = first[0] if isinstance(first, tuple | list) else next(iter(first.values()))
        first.float().mean().backward()
        times.append(time.perf_counter() - start)
    return min(times[1:]) / patch.numel()


@cache
def _activation_bytes_per_voxel(features: tuple[int, ...], preset: str) -> float:
    from edgepanc.networks import PRESETS
    from edgepanc.networks.activation import network_activation_bytes_per_voxel

    network = PRESETS[preset].replace(features=features)
    return network_activation_bytes_per_voxel(network, (2 * network.min_divisor,) * 3)


@cache
def _parameters(features: tuple[int, ...], preset: str) -> int:
    from edgepanc.networks import PRESETS, build_network, count_parameters

    return count_parameters(build_network(PRESETS[preset].replace(features=features)))


def step_cost(
    config: TrainConfig, device: Device, features_of: Any
) -> tuple[Any, float, dict[str, Any]]:
    """``cost(patch, batch, stages)`` for this device, its limit, and how both were reckoned.

    CUDA: bytes (weights and AdamW state, the CUDA context, and the training activations of the
    batch); CPU: seconds (the measured seconds per voxel times the batch's voxels).

    Example: ``cost, limit, how = step_cost(config, Device("cuda", "x", 8e9), features_of)``.
    """
    if device.kind == "cuda":
        amp = config.amp is not False
        factor = TRAINING_OVER_INFERENCE["amp" if amp else "fp32"]

        def cost(patch: tuple[int, int, int], batch: int, stages: int) -> float:
            features = features_of(stages)
            activations = _activation_bytes_per_voxel(features, config.preset) * factor
            fixed = _parameters(features, config.preset) * OPTIMIZER_BYTES_PER_PARAMETER
            return fixed + CUDA_CONTEXT_BYTES + batch * math.prod(patch) * activations

        limit = float(device.memory_bytes or 0.0) * GPU_MEMORY_FRACTION
        return cost, limit, {"unit": "bytes", "gpu_memory_fraction": GPU_MEMORY_FRACTION}
    per_voxel = float(device.seconds_per_voxel or 0.0)

    def seconds(patch: tuple[int, int, int], batch: int, stages: int) -> float:
        return per_voxel * batch * math.prod(patch)

    return seconds, config.step_seconds, {"unit": "seconds", "seconds_per_voxel": per_voxel}


def plan_training(
    config: TrainConfig, fingerprint: Fingerprint, device: Device
) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` with its planned fields (:attr:`TrainConfig.planned`) filled in, and the record
    of how (written to ``plan.json`` under "planning" and printed by ``--print-config``).

    Example::

        >>> config, record = plan_training(config, Fingerprint.of_cases(cases), Device.probe(config))
        >>> record["patch_size"], record["batch_size"]  # what fits this device
    """
    from edgepanc.networks import PRESETS

    planned = set(config.planned)
    base = PRESETS[config.preset]
    spacing = config.target_spacing
    if "target_spacing" in planned or spacing is None:
        spacing = fingerprint.target_spacing()
    median_shape = fingerprint.median_shape(spacing)
    pinned_features = None if "features" in planned else config.features
    max_stages = len(pinned_features or base.features)

    def features_of(stages: int) -> tuple[int, ...]:
        return tuple(pinned_features or base.features[:stages])

    cost, limit, how = step_cost(config, device, features_of)
    shape: StepShape = fit_step_shape(
        median_shape,
        cost,
        limit,
        max_stages,
        min_patch=MIN_PATCH,
        max_batch=MAX_GPU_BATCH if device.kind == "cuda" else 2,
        max_batch_voxels=BATCH_SHARE_OF_DATA * fingerprint.voxels(spacing),
        stages=None if pinned_features is None else len(pinned_features),
        patch=None if "patch_size" in planned else config.patch_size,
    )
    changes: dict[str, Any] = {"target_spacing": spacing, "planned": ()}
    if "patch_size" in planned:
        changes["patch_size"] = shape.patch_size
    if "batch_size" in planned:
        changes["batch_size"] = shape.batch_size
    if "features" in planned:
        changes["features"] = features_of(shape.stages)
    planned_config = config.replace(**changes)
    record = {
        "planned": sorted(planned),
        "training_cases": len(fingerprint.spacings),
        "target_spacing": list(spacing),
        "median_shape": list(median_shape),
        "device": asdict(device),
        "patch_size": list(planned_config.patch_size),
        "batch_size": planned_config.batch_size,
        "features": list(features_of(shape.stages) if pinned_features is None else pinned_features),
        "step_cost": cost(planned_config.patch_size, planned_config.batch_size, shape.stages),
        "limit": limit,
        **how,
    }
    return planned_config, record


def describe_plan(record: dict[str, Any]) -> str:
    """The planning record as comment lines for ``--print-config``.

    Example: ``describe_plan(record)`` -> ``"# plan: ...\\n# ..."``.
    """
    device = record["device"]
    unit = record["unit"]
    cost = (
        f"{record['step_cost'] / 2**30:.2f} GiB of {record['limit'] / 2**30:.2f} GiB usable"
        if unit == "bytes"
        else f"{record['step_cost']:.2f} s per step (target {record['limit']:.2f} s)"
    )
    planned = ", ".join(record["planned"]) or "nothing (the recipe pins it all)"
    return "\n".join(
        [
            f"# plan for {device['name']} ({device['kind']}), {record['training_cases']} training "
            f"cases: planned {planned}",
            f"#   target spacing {record['target_spacing']} mm, median scan there "
            f"{record['median_shape']} voxels",
            f"#   patch {record['patch_size']}, batch {record['batch_size']}, features "
            f"{record['features']}: {cost}",
        ]
    )


__all__ = ["Device", "Fingerprint", "describe_plan", "plan_training", "step_cost"]
