"""Architecture of the multi-task UNet as plain data: :class:`UNetConfig`.

Kept apart from the network (and from torch) so that reading a bundle's ``model.json`` -- what
the ONNX Runtime path of ``edgepanc run`` does -- never imports torch (about 260 MB of resident
memory and a second of start-up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NORM_KINDS: tuple[str, ...] = ("instance", "batch")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`MultiTaskUNet`; stored verbatim in a bundle's ``model.json``.

    ``features`` gives the channels of each encoder stage, shallowest first; the network has
    ``len(features) - 1`` downsamplings, so input sizes must be multiples of ``min_divisor``.
    ``dropout`` is channel dropout inside every conv block (0 disables it);
    ``classifier_dropout`` is the dropout before the last classifier layer.
    ``classifier_scales`` is how many of the deepest encoder stages feed the classifier.
    ``classifier_pooling``: ``"global"`` pools only those encoder stages over the whole patch;
    ``"lesion_attention"`` also pools the final decoder features weighted by the (squared,
    detached) predicted lesion probability and pancreas (pancreas + lesion) probability.
    ``classifier_norm`` puts a LayerNorm on the classifier's hidden layer: without it the hidden
    units of a small network all drifted negative in training and the subtype output became a
    constant (the prior) however long it trained.
    """

    in_channels: int = 1
    num_classes: int = 3
    num_subtypes: int = 3
    # nnU-Net's (32, 64, 128, 256, 320, 320) gives 31.7M parameters; capping the deep stages
    # lands at 22.6M, within 2% of the original model's 22,970,150, with the same 5 downsamplings.
    features: tuple[int, ...] = (32, 64, 128, 224, 256, 256)
    convs_per_stage: int = 2
    norm: str = "instance"
    kernel_size: int = 3
    deep_supervision: bool = False
    dropout: float = 0.0
    classifier_hidden: int = 256
    classifier_scales: int = 3
    classifier_dropout: float = 0.3
    # The subtype is a property of the lesion, which global pooling of a patch dilutes.
    classifier_pooling: str = "lesion_attention"
    classifier_norm: bool = True
    # Regions whose input attenuation (mean, std) the classifier sees: 2 = lesion and pancreas;
    # 5 adds the lesion's core, its rim and a shell just outside it (see
    # region_intensity_statistics).
    intensity_regions: int = 5
    # Whether a lesion-attention head also sees the deepest encoder stages pooled over the whole
    # patch. Off: hundreds of patch-context features drown the few lesion descriptors.
    classifier_context: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; a tuple keeps the frozen config hashable and comparable.
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        problems = _config_problems(self)
        if problems:
            raise ValueError("invalid UNetConfig: " + "; ".join(problems))

    @property
    def num_stages(self) -> int:
        return len(self.features)

    @property
    def min_divisor(self) -> int:
        """Every spatial input size must be a multiple of this (2 ** downsamplings)."""
        return 2 ** (len(self.features) - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (features as a list)."""
        data = dataclasses.asdict(self)
        data["features"] = list(self.features)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults.

        Keys added after bundles were first written take the value that reproduces those older
        networks (see ``_FIELDS_ABSENT_FROM_OLD_BUNDLES``), so their weights still load.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys: {', '.join(unknown)}")
        return cls(**{**_FIELDS_ABSENT_FROM_OLD_BUNDLES, **dict(data)})

    def replace(self, **changes: Any) -> UNetConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return dataclasses.replace(self, **changes)


CLASSIFIER_POOLINGS: tuple[str, ...] = ("global", "lesion_attention")
INTENSITY_REGIONS: tuple[int, ...] = (2, 5)

# Label indices the attention pooling reads from the segmentation output (labels are fixed by the
# product: 0 background, 1 pancreas, 2 lesion).
BACKGROUND_LABEL = 0
PANCREAS_LABEL = 1
LESION_LABEL = 2

# The weights are p ** 2, not p: a low lesion probability spread over a patch's many background
# voxels would otherwise hold much of the attention mass, the more the larger the patch.
ATTENTION_POWER = 2

# A model.json written before ``classifier_pooling`` existed describes a global-pooling head.
_FIELDS_ABSENT_FROM_OLD_BUNDLES: dict[str, Any] = {
    "classifier_pooling": "global",
    "classifier_norm": False,
    "intensity_regions": 2,
    "classifier_context": True,
}


def _config_problems(config: UNetConfig) -> list[str]:
    problems = []
    if len(config.features) < 2:
        problems.append("features needs at least two stages")
    if any(f < 1 for f in config.features):
        problems.append("every feature count must be positive")
    if config.norm not in NORM_KINDS:
        problems.append(f"norm must be one of {NORM_KINDS}, got {config.norm!r}")
    if config.kernel_size < 1 or config.kernel_size % 2 == 0:
        problems.append("kernel_size must be odd and positive")
    if config.convs_per_stage < 1:
        problems.append("convs_per_stage must be at least 1")
    if not 1 <= config.classifier_scales <= len(config.features):
        problems.append(f"classifier_scales must be in 1..{len(config.features)}")
    if config.intensity_regions not in INTENSITY_REGIONS:
        problems.append(f"intensity_regions must be one of {INTENSITY_REGIONS}")
    if config.classifier_pooling not in CLASSIFIER_POOLINGS:
        problems.append(
            f"classifier_pooling must be one of {CLASSIFIER_POOLINGS}, "
            f"got {config.classifier_pooling!r}"
        )
    elif config.classifier_pooling == "lesion_attention" and config.num_classes <= LESION_LABEL:
        problems.append(f"classifier_pooling 'lesion_attention' needs label {LESION_LABEL}")
    for name in ("dropout", "classifier_dropout"):
        if not 0.0 <= getattr(config, name) < 1.0:
            problems.append(f"{name} must be in [0, 1)")
    for name in ("in_channels", "num_classes", "num_subtypes", "classifier_hidden"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be positive")
    return problems


__all__ = [
    "ATTENTION_POWER",
    "BACKGROUND_LABEL",
    "CLASSIFIER_POOLINGS",
    "INTENSITY_REGIONS",
    "LESION_LABEL",
    "PANCREAS_LABEL",
    "NORM_KINDS",
    "UNetConfig",
]
