"""Configuration of the compression stage: one frozen dataclass mirrored by the CLI flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRUNE_CRITERIA: tuple[str, ...] = ("l1", "l2", "taylor")
INT8_MODES: tuple[str, ...] = ("ptq", "qat", "both", "none")
# measured: INT8 only where this CPU runs the layer faster in INT8 (int8_placement.py).
INT8_LAYER_CHOICES: tuple[str, ...] = ("measured", "all")
CALIBRATION_METHODS: tuple[str, ...] = ("auto", "minmax", "entropy", "percentile")
EXPORT_KINDS: tuple[str, ...] = ("onnx", "int8", "tensorrt", "openvino")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

# A pruning ratio above this leaves too few channels per stage to recover by fine-tuning.
MAX_PRUNE_RATIO = 0.9
# Fewer calibration cases than this give activation ranges dominated by one scan.
MIN_CALIBRATION_CASES = 2


# The per-case subtype a variant names, ``{case_id: subtype}``, kept with its validation metrics.
SUBTYPES_BY_CASE = "subtypes_by_case"


@dataclass(frozen=True)
class AccuracyTolerance:
    """Largest accuracy loss against fp32 that still lets a variant become the default.

    Over a few dozen validation cases one case whose subtype flips moves macro F1 by 0.02 to
    0.07, more than ``macro_f1``: a variant that names another subtype than fp32 on at most
    ``subtype_changes`` of the cases (and at least one case) is within it on macro F1 whatever
    that flip cost.

    Example::

        >>> fp32 = {"whole_dsc": 0.90, "lesion_dsc": 0.31, "macro_f1": 0.33}
        >>> AccuracyTolerance().accepts(fp32, {**fp32, "macro_f1": 0.30})
        False
    """

    whole_dsc: float = 0.01
    lesion_dsc: float = 0.03
    macro_f1: float = 0.02
    subtype_changes: float = 0.03  # share of the cases, at least one

    def accepts(self, reference: dict[str, Any], candidate: dict[str, Any]) -> bool:
        """True when ``candidate`` loses at most the tolerated amount on every metric, or
        changes few enough subtypes (:meth:`changed_subtypes`) for its macro F1 loss."""
        limits = {"whole_dsc": self.whole_dsc, "lesion_dsc": self.lesion_dsc}
        if any(reference[name] - candidate[name] > limit + 1e-9 for name, limit in limits.items()):
            return False
        if reference["macro_f1"] - candidate["macro_f1"] <= self.macro_f1 + 1e-9:
            return True
        changed = self.changed_subtypes(reference, candidate)
        cases = len(reference.get(SUBTYPES_BY_CASE) or {})
        return changed is not None and changed <= max(1, int(self.subtype_changes * cases))

    @staticmethod
    def changed_subtypes(reference: dict[str, Any], candidate: dict[str, Any]) -> int | None:
        """On how many cases ``candidate`` names another subtype than ``reference`` (None when
        either did not record them per case)."""
        ours, theirs = reference.get(SUBTYPES_BY_CASE), candidate.get(SUBTYPES_BY_CASE)
        if not ours or theirs is None:
            return None
        return sum(theirs.get(case) != subtype for case, subtype in ours.items())


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything ``edgepanc quantize`` needs; every field is a recipe and ``--set`` key.

    Example: ``QuantizeConfig(model="run", data="data", out="q", int8="ptq").wants_ptq`` -> True.
    """

    model: Path
    data: Path
    out: Path
    prune: float | None = None  # share of output channels removed per stage; None: no pruning
    prune_criterion: str = "l1"
    int8: str = "ptq"
    int8_layers: str = "measured"
    calibration_cases: int = 8
    calibration_method: str = "auto"
    calibration_patches_per_case: int = 4
    finetune_epochs: int = 2
    qat_epochs: int = 2
    steps_per_epoch: int = 20
    lr: float = 3e-4
    export: tuple[str, ...] = ("onnx", "int8", "tensorrt", "openvino")
    device: str = "auto"
    latency_runs: int = 5
    max_validation_cases: int | None = None  # None: every validation case
    seed: int = 0
    tolerance: AccuracyTolerance = AccuracyTolerance()
    recipe: str | None = None  # the recipe (name or file) the values came from, for the report

    def __post_init__(self) -> None:
        # frozen: the CLI and callers may pass strings; the fields are Paths from here on
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "export", tuple(self.export))
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def wants_int8(self) -> bool:
        """INT8 ONNX variants are asked for (post-training, quantization-aware or both)."""
        return self.int8 != "none" and "int8" in self.export

    @property
    def wants_ptq(self) -> bool:
        return self.int8 in ("ptq", "both") and "int8" in self.export

    @property
    def wants_qat(self) -> bool:
        return self.int8 in ("qat", "both") and "int8" in self.export

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, recorded in the report so a result can be reproduced."""
        data = dataclasses.asdict(self)
        for name in ("model", "data", "out"):
            data[name] = str(data[name])
        data["export"] = list(self.export)
        return data


def config_problems(config: QuantizeConfig) -> list[str]:
    """Every range problem of ``config`` as a short phrase (empty when valid)."""
    problems = []
    if config.prune is not None and not 0.0 < config.prune <= MAX_PRUNE_RATIO:
        problems.append(f"pruning ratio must be in (0, {MAX_PRUNE_RATIO}], got {config.prune}")
    if config.prune_criterion not in PRUNE_CRITERIA:
        problems.append(f"prune criterion must be one of {PRUNE_CRITERIA}")
    if config.int8 not in INT8_MODES:
        problems.append(f"int8 must be one of {INT8_MODES}")
    if config.int8_layers not in INT8_LAYER_CHOICES:
        problems.append(f"int8_layers must be one of {INT8_LAYER_CHOICES}")
    if config.calibration_method not in CALIBRATION_METHODS:
        problems.append(f"calibration method must be one of {CALIBRATION_METHODS}")
    if config.calibration_cases < MIN_CALIBRATION_CASES:
        problems.append(
            f"at least {MIN_CALIBRATION_CASES} calibration cases are needed, "
            f"got {config.calibration_cases}"
        )
    unknown = sorted(set(config.export) - set(EXPORT_KINDS))
    if unknown:
        problems.append(f"unknown export kinds {unknown}; choose from {EXPORT_KINDS}")
    if config.device not in DEVICES:
        problems.append(f"device must be one of {DEVICES}")
    for name in ("finetune_epochs", "qat_epochs"):
        if getattr(config, name) < 0:
            problems.append(f"{name} must be >= 0")
    if config.latency_runs < 1 or config.steps_per_epoch < 1:
        problems.append("latency_runs and steps_per_epoch must be >= 1")
    return problems
