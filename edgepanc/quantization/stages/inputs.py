"""Inputs: every input checked before any work, then the run's context made once.

:func:`check_inputs` raises a one-line InputError or BundleError naming the file for anything
unusable (output folder, bundle, data set); :func:`make_context` preprocesses the calibration
(training) and validation cases once on the bundle's plan and draws the calibration patches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepanc.backends.devices import cuda_available, resolve_device
from edgepanc.bundle import ModelBundle, load_bundle
from edgepanc.data.cases import discover_cases
from edgepanc.errors import BundleError, InputError
from edgepanc.quantization.config import QuantizeConfig
from edgepanc.quantization.ptq import calibration_patches
from edgepanc.quantization.stages.context import PreparedData, QuantizeContext
from edgepanc.training.dataset import PreparedCase, prepare_cases

# The ONNX export is checked against PyTorch on one patch from each of this many validation cases.
VALIDATION_CHECK_CASES = 4


@dataclass(frozen=True)
class CheckedInputs:
    """The inputs of a run, checked before anything is written."""

    bundle: ModelBundle
    calibration: list[Any]
    validation: list[Any]


def check_inputs(config: QuantizeConfig) -> CheckedInputs:
    """Raise an InputError (one line naming the file) for any unusable input."""
    check_output_folder(config.out)
    bundle = load_trained_bundle(config.model)
    cases = discover_cases(config.data)
    return CheckedInputs(
        bundle,
        pick_calibration_cases(cases, config.calibration_cases, config.data),
        validation_cases(cases, config.max_validation_cases, config.data),
    )


def check_output_folder(out: Path) -> None:
    """Refuse an existing non-empty ``out`` or a parent we cannot write into."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "output folder exists and is not empty; choose a new --out")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(out, f"cannot create the output folder: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(out, f"cannot write into {parent} (permission denied)")


def load_trained_bundle(path: Path) -> ModelBundle:
    """The input bundle; it must be a trained model with its weights."""
    bundle = load_bundle(path)
    if bundle.kind != "trained":
        raise BundleError(path, f"is a {bundle.kind!r} bundle; quantize needs a trained model")
    if not bundle.preprocessing:
        raise BundleError(path, "model.json has no preprocessing plan; not a trained model")
    return bundle


def pick_calibration_cases(cases: Sequence[Any], count: int, data: Path) -> list[Any]:
    """``count`` training cases, alternating subtypes so every subtype calibrates the ranges."""
    training = [c for c in cases if c.split == "train" and c.label is not None]
    if len(training) < count:
        raise InputError(
            data,
            f"only {len(training)} labelled training cases, --calibration-cases asks for {count}",
        )
    by_subtype: dict[Any, list[Any]] = {}
    for case in sorted(training, key=lambda c: c.case_id):
        by_subtype.setdefault(case.subtype, []).append(case)
    queues = list(by_subtype.values())
    picked: list[Any] = []
    while len(picked) < count:
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


def validation_cases(cases: Sequence[Any], limit: int | None, data: Path) -> list[Any]:
    """The data set's validation cases (at most ``limit``); they must exist and be labelled."""
    chosen = sorted(
        (c for c in cases if c.split == "validation" and c.label is not None),
        key=lambda c: c.case_id,
    )
    if not chosen:
        raise InputError(data, "no labelled validation cases to measure accuracy on")
    return chosen[:limit] if limit else chosen


def finetune_device(device: str) -> str:
    """``--device`` resolved; asking for cuda where torch sees none is an input error."""
    resolved = resolve_device(device)
    if resolved == "cuda" and not cuda_available():
        raise InputError("--device", "cuda asked for, but torch sees no CUDA device")
    return resolved


def make_context(config: QuantizeConfig, inputs: CheckedInputs, staging: Path) -> QuantizeContext:
    """The run's context: the checked inputs, preprocessed once, and the staging folder."""
    device = finetune_device(config.device)
    plan = inputs.bundle.plan
    patch_size = tuple(int(s) for s in plan.patch_size)
    calibration = prepare_cases(inputs.calibration, plan, "calibration cases")
    validation = prepare_cases(inputs.validation, plan, "validation cases")
    return QuantizeContext(
        config=config,
        source=inputs.bundle,
        plan=plan,
        patch_size=patch_size,
        device=device,
        staging=staging,
        data=_prepared_data(config, inputs.bundle, calibration, validation, patch_size),
    )


def _prepared_data(
    config: QuantizeConfig,
    bundle: ModelBundle,
    calibration: list[PreparedCase],
    validation: list[PreparedCase],
    patch_size: tuple[int, ...],
) -> PreparedData:
    """Calibration patches drawn with the foreground shares the model was trained with."""
    training = bundle.provenance.get("training", {})
    shares = {
        key: float(training[key])
        for key in ("lesion_fraction", "pancreas_fraction")
        if key in training
    }
    batch = calibration_patches(
        calibration, patch_size, config.calibration_patches_per_case, seed=config.seed, **shares
    )
    real = calibration_patches(
        validation[:VALIDATION_CHECK_CASES], patch_size, 1, seed=config.seed + 1, **shares
    )
    return PreparedData(
        calibration_cases=calibration,
        validation_cases=validation,
        patches=batch["image"],
        labels=batch["label"],
        subtypes=batch["subtype"],
        validation_patches=real["image"],
    )
