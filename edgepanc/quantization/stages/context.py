"""The one context every stage of ``edgepanc quantize`` works over.

It is made in one place, :func:`edgepanc.quantization.stages.inputs.make_context`, after every
input has been checked: what was asked (the config), what is read (the source bundle and the
prepared cases), where the new bundle is staged, and what the stages have measured so far.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepanc.backends.base import Predictor
from edgepanc.bundle import ModelBundle
from edgepanc.preprocessing.plan import PreprocessingPlan
from edgepanc.quantization.config import QuantizeConfig
from edgepanc.quantization.report import VariantResult
from edgepanc.quantization.variants import Variant
from edgepanc.training.dataset import PreparedCase


@dataclass(frozen=True)
class PreparedData:
    """The cases and patches the stages share, preprocessed once on the bundle's plan."""

    calibration_cases: list[PreparedCase]  # training cases: INT8 ranges and fine-tuning
    validation_cases: list[PreparedCase]  # every variant is scored on these
    patches: np.ndarray  # calibration patches [N, 1, D, H, W] float32
    labels: np.ndarray  # their labels [N, D, H, W] (Taylor pruning scores the training loss)
    subtypes: np.ndarray  # their subtypes [N]
    validation_patches: np.ndarray  # real patches the ONNX export is checked on


@dataclass
class Measured:
    """A variant kept in the new bundle: what it is, what was measured, what runs it."""

    variant: Variant
    result: VariantResult
    predictor: Predictor  # kept for the latency timing at the end


@dataclass
class QuantizeContext:
    """One run: its inputs (read only) and what its stages have built and measured."""

    config: QuantizeConfig
    source: ModelBundle  # the trained input bundle; never written
    plan: PreprocessingPlan
    patch_size: tuple[int, ...]
    device: str  # where fine-tuning runs ("cpu" or "cuda")
    staging: Path  # the hidden folder the new bundle is assembled in
    data: PreparedData
    measured: list[Measured] = field(default_factory=list)  # in the order they were built
    trials: dict[str, Any] = field(default_factory=dict)  # every measurement behind a choice
    notes: list[str] = field(default_factory=list)  # lines for the report's notes

    @property
    def training(self) -> dict[str, Any]:
        """The training settings the source bundle records (empty for an older bundle)."""
        return self.source.provenance.get("training", {})

    @property
    def results(self) -> list[VariantResult]:
        return [m.result for m in self.measured]

    def path(self, variant: Variant) -> Path:
        """Where ``variant``'s file goes in the staged bundle."""
        return self.staging / variant.file

    @contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A temporary folder beside the staging folder (same disk), removed afterwards."""
        with tempfile.TemporaryDirectory(
            dir=self.staging.parent, prefix=prefix, ignore_cleanup_errors=True
        ) as folder:
            yield Path(folder)
