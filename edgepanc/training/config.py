"""Training configuration: one frozen dataclass, stored in the run folder as ``config.json``.

The fields that change what is learned (everything except paths, device, threads and the
thermal settings) make up :func:`TrainConfig.identity`; ``--resume`` refuses a run folder whose
identity differs, so a resumed run always continues the same experiment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

LESION_DICE_MODES = ("batch", "sample")  # see edgepanc.training.losses
HEAD_STATISTICS_MODES = ("augmented", "clean")  # see TrainConfig.head_statistics
PRESET_NAMES = ("tiny", "cpu", "default")  # edgepanc.networks.presets.PRESETS, without torch
DEVICE_NAMES = ("auto", "cuda", "cpu")
# What the planner may choose when no recipe pins it (edgepanc.training.planning).
PLANNABLE = ("target_spacing", "patch_size", "batch_size", "features")
# Lower bounds of the numeric fields, so that a recipe or --set is checked as a flag is.
_AT_LEAST = {
    "batch_size": 1,
    "epochs": 1,
    "steps_per_epoch": 1,
    "val_every": 1,
    "warmup_epochs": 0,
    "patience": 0,
    "folds": 0,
    "workers": 0,
    "seed": 0,
    "lr": 0.0,
    "weight_decay": 0.0,
    "grad_clip": 0.0,
    "seg_weight": 0.0,
    "cls_weight": 0.0,
    "lesion_fraction": 0.0,
    "pancreas_fraction": 0.0,
    "lesion_size_balance": 0.0,
    "elastic_probability": 0.0,
    "low_resolution_probability": 0.0,
    "selection_share": 0.0,
    "cpu_max_temp": 20.0,
    "gpu_max_temp": 20.0,
    "thermal_timeout": 1.0,
}
# Upper bounds, as the command-line flags these fields once were had them.
_AT_MOST = {
    "lr": 1.0,
    "weight_decay": 1.0,
    "seg_weight": 100.0,
    "cls_weight": 100.0,
    "lesion_fraction": 1.0,
    "pancreas_fraction": 1.0,
    "lesion_size_balance": 3.0,
    "elastic_probability": 1.0,
    "low_resolution_probability": 1.0,
    "selection_share": 0.5,
    "cpu_max_temp": 120.0,
    "gpu_max_temp": 120.0,
    "thermal_timeout": 86400.0,
}

# Fields that may differ between a run and its resumption without changing the experiment.
_NON_IDENTITY_FIELDS = frozenset(
    {
        "data",
        "out",
        "device",
        "threads",
        "cpu_max_temp",
        "gpu_max_temp",
        "thermal_timeout",
        "require_thermal",
        "resume",
        # Which recipe a configuration came from and why: its values are what count.
        "recipe",
        "recipe_reason",
        # What the planner was left to choose, and its CPU step target: the planned values
        # themselves (patch, batch, spacing, features) are part of the identity.
        "planned",
        "step_seconds",
        # The epoch count a time budget plans is recorded in the checkpoint, like epochs.
        "time_budget",
        "epochs",
        "patience",
        # Only adds a phase after the last epoch: a finished run resumed with --head-refit gets
        # its head refitted without training again.
        "head_refit",
    }
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``edgepanc train`` needs; every field is a recipe key and a ``--set`` key.

    Example: ``TrainConfig(data="data100", out="model", epochs=2).identity()`` -> a 16-digit hash.
    """

    data: str
    out: str
    preset: str = "cpu"
    features: tuple[int, ...] | None = None  # overrides the preset's features when given
    patch_size: tuple[int, int, int] = (32, 64, 64)  # (z, y, x) voxels on the target grid
    target_spacing: tuple[float, float, float] | None = None  # (z, y, x) mm; None: median
    batch_size: int = 2
    epochs: int = 50
    steps_per_epoch: int = 50
    lr: float = 3e-3
    weight_decay: float = 3e-5
    warmup_epochs: int = 2
    grad_clip: float = 12.0  # max gradient norm, as nnU-Net
    seg_weight: float = 1.0
    cls_weight: float = 0.5
    # Share of lesion patches whose classifier pools under the reference mask instead of the
    # prediction (see edgepanc.networks.unet.teacher_forced_probability).
    teacher_forcing: float = 0.5
    # None: that share all through training. A value: the share moves linearly from
    # teacher_forcing at the first step to this at the last, so the head ends the schedule on
    # the predicted masks the runtime gives it.
    teacher_forcing_end: float | None = None
    # What the subtype head's attenuation statistics read in training: the intensity-augmented
    # patch the segmentation sees ("augmented"), or the same patch before intensity augmentation
    # ("clean"). CT attenuation is calibrated, and the subtypes differ in it by a few HU, which
    # gamma, scale, shift, noise and blur move by more.
    head_statistics: str = "augmented"
    # Teacher forcing pools under the reference lesion shifted by up to this many voxels per
    # axis and grown by up to as many or shrunk by one (edgepanc.training.teacher); 0: exact.
    teacher_mask_jitter: int = 0
    # After the last epoch, refit the subtype head alone on the features of the runtime's tiles
    # of the training cases (edgepanc.training.head_refit), then validate once more.
    head_refit: bool = False
    # Share of the training cases held out (stratified by subtype, seeded) to choose the best
    # checkpoint and whether the refitted head is kept (edgepanc.training.selection); 0: the
    # validation cases choose, so the figures they report are optimistic (the report says so).
    selection_share: float = 0.0
    # After training, choose how far to grow a lesion of each predicted subtype into the gland
    # on the cases that chose the model (edgepanc.training.lesion_margins); False: no margins.
    lesion_margins: bool = True
    lesion_fraction: float = 0.6  # share of patches centred on a lesion voxel
    pancreas_fraction: float = 0.25  # share centred on a pancreas voxel; the rest random
    # Cases of a subtype drawn in proportion to (lesion diameter)^-this: small lesions more often
    # (edgepanc.training.sampling); 0: every case of a subtype alike.
    lesion_size_balance: float = 0.0
    lesion_dice: str = "batch"  # "sample": per-patch lesion Dice (edgepanc.training.losses)
    # Tversky beta of the lesion term: the weight of missed lesion voxels against false ones
    # (1 - beta); above 0.5 favours recall. 0.5: the Dice term (edgepanc.training.losses).
    lesion_recall_weight: float = 0.5
    zoom_out_probability: float = 0.15  # patches seen at half scale (the runtime's coarse pass)
    # Share of patches elastically deformed / taken to a coarser grid and back
    # (edgepanc.training.augmentation); 0: off.
    elastic_probability: float = 0.0
    low_resolution_probability: float = 0.0
    deep_supervision: bool = False
    # A trained bundle to start from: its weights, network and preprocessing plan (fine-tuning,
    # e.g. a model trained on pancreas crops continued on whole CTs). None: random weights.
    init_from: str | None = None
    device: str = "auto"
    amp: bool | None = None  # None: fp16 on CUDA, off on CPU (see loop.py)
    folds: int = 0  # 0: use the data set's own train/validation split
    fold: int | None = None
    seed: int = 0
    val_every: int = 1
    patience: int = 0  # validations without improvement before stopping; 0 disables
    val_step_fraction: float = 0.5
    cpu_max_temp: float = 68.0
    gpu_max_temp: float = 72.0
    thermal_timeout: float = 1800.0
    require_thermal: bool = False
    threads: int | None = None  # torch intra-op threads on CPU; None: torch's default
    workers: int = 0  # background processes drawing patches (batches.py); 0: the training process
    resume: bool = False
    # Wall-time budget of the whole run in seconds (`--time-budget`); None: train `epochs`.
    # With a budget the epoch count follows from the measured epoch and validation times
    # (edgepanc.training.time_budget) and `epochs` only sets the schedule of the first epoch.
    time_budget: float | None = None
    # The fields the planner chooses from the data and the device (edgepanc.training.planning):
    # the plannable fields no recipe, --set or flag pinned. Empty once planned.
    planned: tuple[str, ...] = ()
    step_seconds: float = 0.5  # CPU: the time one training step may take in a planned patch
    recipe: str | None = None  # the recipe (name or file) the values came from
    recipe_reason: str | None = None  # why that recipe: chosen for this machine, or asked for
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        object.__setattr__(self, "planned", tuple(self.planned))
        unknown = set(self.planned) - set(PLANNABLE)
        if unknown:
            raise ValueError(f"planned names {sorted(unknown)}; plannable: {PLANNABLE}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be above 0 seconds, got {self.time_budget}")
        if not self.step_seconds > 0:
            raise ValueError(f"step_seconds must be above 0, got {self.step_seconds}")
        if self.features is not None:
            object.__setattr__(self, "features", tuple(int(v) for v in self.features))
        if self.target_spacing is not None:
            object.__setattr__(self, "target_spacing", tuple(float(v) for v in self.target_spacing))
        for name, low in _AT_LEAST.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        for name, high in _AT_MOST.items():
            if getattr(self, name) > high:
                raise ValueError(f"{name} must be at most {high}, got {getattr(self, name)}")
        if self.preset not in PRESET_NAMES:
            raise ValueError(f"preset must be one of {PRESET_NAMES}, got {self.preset!r}")
        if self.device not in DEVICE_NAMES:
            raise ValueError(f"device must be one of {DEVICE_NAMES}, got {self.device!r}")
        if self.features is not None and (len(self.features) < 2 or min(self.features) < 1):
            raise ValueError(f"features must be two or more positive counts, got {self.features}")
        if min(self.patch_size) < 1 or len(self.patch_size) != 3:
            raise ValueError(f"patch_size must be three positive sizes, got {self.patch_size}")
        if self.lesion_dice not in LESION_DICE_MODES:
            raise ValueError(f"lesion_dice must be one of {LESION_DICE_MODES}")
        if not 0.0 < self.lesion_recall_weight < 1.0:
            raise ValueError(
                f"lesion_recall_weight must be in (0, 1), got {self.lesion_recall_weight}"
            )
        if self.head_statistics not in HEAD_STATISTICS_MODES:
            raise ValueError(f"head_statistics must be one of {HEAD_STATISTICS_MODES}")
        for name in ("teacher_forcing", "teacher_forcing_end"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0 <= self.teacher_mask_jitter <= 8:
            raise ValueError(f"teacher_mask_jitter must be in 0..8, got {self.teacher_mask_jitter}")
        if self.lesion_fraction + self.pancreas_fraction > 1.0:
            raise ValueError("lesion_fraction + pancreas_fraction must be <= 1")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["planned"] = list(data["planned"])
        for key in ("patch_size", "features", "target_spacing"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def identity(self) -> str:
        """A short hash of the fields that define the experiment (see module docstring)."""
        data = {k: v for k, v in self.to_dict().items() if k not in _NON_IDENTITY_FIELDS}
        # Options at the value that reproduces runs made before they existed are left out, so
        # those runs' identities stay valid.
        if data.get("workers") == 0:
            del data["workers"]
        if data.get("lesion_dice") == "batch":
            del data["lesion_dice"]
        if data.get("lesion_recall_weight") == 0.5:
            del data["lesion_recall_weight"]
        if data.get("teacher_forcing_end") is None:
            data.pop("teacher_forcing_end", None)
        if data.get("head_statistics") == "augmented":
            del data["head_statistics"]
        if data.get("teacher_mask_jitter") == 0:
            del data["teacher_mask_jitter"]
        if data.get("selection_share") == 0.0:
            del data["selection_share"]
        if data.get("lesion_margins") is True:  # runs from before margins keep their identity
            del data["lesion_margins"]
        for name in ("lesion_size_balance", "elastic_probability", "low_resolution_probability"):
            if data.get(name) == 0.0:
                del data[name]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
