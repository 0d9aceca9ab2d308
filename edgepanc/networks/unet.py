"""The multi-task 3D UNet: pancreas + lesion segmentation and lesion subtype classification.

A plain-convolution encoder-decoder in the style of nnU-Net: the first encoder stage keeps the
input resolution, every further stage halves it with a stride-2 convolution; the decoder
upsamples with ConvTranspose3d, concatenates the encoder skip and convolves. A classification
head pools several of the deepest encoder stages (average and max) and, by default, the final
full-resolution decoder features weighted by the predicted lesion (and pancreas) probability, and
maps them to subtype logits through a small MLP.

Attributes are named for the later compression stage: ``encoder.stages``, ``decoder.upsamples``,
``decoder.stages``, ``seg_head``, ``ds_heads`` and ``cls_head``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgepanc.networks.blocks import LEAKY_SLOPE, ConvStage
from edgepanc.networks.config import (
    ATTENTION_POWER,
    BACKGROUND_LABEL,
    CLASSIFIER_POOLINGS,
    LESION_LABEL,
    UNetConfig,
)


def check_input_shape(shape: Sequence[int], config: UNetConfig) -> None:
    """Raise ValueError unless ``shape`` is ``[B, in_channels, D, H, W]`` with sizes divisible."""
    if len(shape) != 5 or shape[1] != config.in_channels:
        raise ValueError(f"expected input [B, {config.in_channels}, D, H, W], got {list(shape)}")
    bad = [int(s) for s in shape[2:] if s % config.min_divisor]
    if bad:
        raise ValueError(
            f"spatial size {list(shape[2:])} must be a multiple of {config.min_divisor} "
            f"on every axis (network has {config.num_stages - 1} downsamplings)"
        )


class Encoder(nn.Module):
    """``stages[0]`` keeps the resolution; ``stages[i > 0]`` downsample by a stride-2 conv."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        channels_in = (config.in_channels, *config.features[:-1])
        self.stages = nn.ModuleList(
            ConvStage(
                c_in,
                c_out,
                config.convs_per_stage,
                kernel_size=config.kernel_size,
                stride=1 if i == 0 else 2,
                norm=config.norm,
                dropout=config.dropout,
            )
            for i, (c_in, c_out) in enumerate(zip(channels_in, config.features, strict=True))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the output of every stage, shallowest (full resolution) first."""
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """``upsamples[j]`` and ``stages[j]`` go from the deepest resolution upwards."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        deep_to_shallow = config.features[::-1]
        self.upsamples = nn.ModuleList(
            nn.ConvTranspose3d(c_deep, c_skip, kernel_size=2, stride=2)
            for c_deep, c_skip in zip(deep_to_shallow[:-1], deep_to_shallow[1:], strict=True)
        )
        self.stages = nn.ModuleList(
            ConvStage(
                2 * c_skip,  # upsampled features concatenated with the skip
                c_skip,
                config.convs_per_stage,
                kernel_size=config.kernel_size,
                norm=config.norm,
                dropout=config.dropout,
            )
            for c_skip in deep_to_shallow[1:]
        )

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return every decoder stage output, deepest (lowest resolution) first."""
        x = skips[-1]
        outputs = []
        for upsample, stage, skip in zip(
            self.upsamples, self.stages, reversed(skips[:-1]), strict=True
        ):
            x = stage(torch.cat((upsample(x), skip), dim=1))
            outputs.append(x)
        return outputs


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis (dim 1) of ``logits`` [B, C, D, H, W], written out.

    Exported as ReduceMax, Sub, Exp, ReduceSum and Div rather than one Softmax node: ONNX
    Runtime's CPU Softmax on a non-last axis runs through transposes, many times slower for the
    same values (docs/measurements/quantization_cpu_recipe.md).
    """
    shifted = logits - logits.amax(dim=1, keepdim=True)
    exponential = torch.exp(shifted)
    return exponential / exponential.sum(dim=1, keepdim=True)


def normalized_attention(probability: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``probability`` [B, D, H, W] scaled to sum to 1 per sample -> weights [B, 1, D, H, W].

    ``eps`` only guards an all-zero map; a patch with next to no lesion still gets weights that
    sum to about 1, concentrated on its most lesion-like voxels.
    """
    total = probability.sum(dim=(1, 2, 3), keepdim=True)
    return (probability / (total + eps)).unsqueeze(1)


def attention_pool(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over space: features [B, C, D, H, W], weights [B, 1, D, H, W] -> [B, C].

    Written as mul + ReduceSum rather than a matmul so that INT8 post-training quantization,
    which quantizes MatMul, leaves the tiny per-voxel weights in floating point.
    """
    return (features * weights).sum(dim=(2, 3, 4))


def region_pooled_features(features: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """[lesion-weighted mean, pancreas-weighted mean] of ``features`` -> [B, 2 * C].

    ``probability`` [B, classes, D, H, W] is the segmentation softmax (or, in teacher-forced
    training, the one-hot reference). The weights are the probabilities of the lesion label and
    of pancreas + lesion (one minus background), raised to ``ATTENTION_POWER`` and normalised per
    sample. Computed in float32: under fp16 autocast a sum over a whole patch overflows.
    """
    lesion, pancreas = region_weights(probability)
    features = features.float()
    return torch.cat((attention_pool(features, lesion), attention_pool(features, pancreas)), dim=1)


def region_weights(probability: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised lesion and pancreas attention weights, each [B, 1, D, H, W] (float32)."""
    probability = probability.float()
    lesion = normalized_attention(probability[:, LESION_LABEL] ** ATTENTION_POWER)
    pancreas = normalized_attention((1.0 - probability[:, BACKGROUND_LABEL]) ** ATTENTION_POWER)
    return lesion, pancreas


def box_max(x: torch.Tensor, size: int) -> torch.Tensor:
    """The maximum over a ``size``^3 box round every voxel of ``x`` [B, C, D, H, W] (same shape).

    Three one-axis max pools give exactly the box's maximum at a fraction of a 3D pool's cost
    (a 5^3 pool was a tenth of a CPU training step).

    Example: ``box_max(torch.eye(3).reshape(1, 1, 1, 3, 3), 3)`` is all ones.
    """
    pad = size // 2
    for axis in range(3):
        kernel = [1, 1, 1]
        padding = [0, 0, 0]
        kernel[axis], padding[axis] = size, pad
        x = F.max_pool3d(x, kernel_size=kernel, stride=1, padding=padding)
    return x


def lesion_surroundings(lesion_probability: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Core, rim and outer shell of a soft lesion mask [B, D, H, W], each [B, D, H, W] in [0, 1].

    Core: the mask eroded by one voxel (a 3^3 min filter); rim: the mask minus its core; shell:
    the mask dilated by two voxels (a 5^3 max filter) minus the mask. What separates the phantom
    subtypes (and the real ones) is largely here: a blended margin, a thin enhancing wall round
    fluid, a thick bright ring round a core.
    """
    m = lesion_probability.unsqueeze(1)
    eroded = -box_max(-m, 3)
    core = m * eroded
    rim = m - core
    shell = torch.clamp(box_max(m, 5) - m, min=0.0)
    return core[:, 0], rim[:, 0], shell[:, 0]


def region_intensity_statistics(
    image: torch.Tensor, probability: torch.Tensor, regions: int = 5
) -> torch.Tensor:
    """Weighted mean and standard deviation of the input under region weights.

    [B, 2 * regions * C_in]: per region (mean, std) per input channel, the regions being the
    lesion and the pancreas (``regions=2``), or lesion, lesion core, lesion rim, shell round the
    lesion and pancreas (``regions=5``; :func:`lesion_surroundings`). The input is CT normalised
    with data-set statistics, so these keep the absolute attenuation that instance normalisation
    removes from every feature map; under reference masks the five regions' statistics separate
    the subtypes far better than the lesion's alone.
    """
    image = image.float()
    lesion, pancreas = region_weights(probability)
    weights = [lesion]
    if regions == 5:
        surroundings = lesion_surroundings(probability[:, LESION_LABEL].float())
        weights += [normalized_attention(region) for region in surroundings]
    weights.append(pancreas)
    stats = []
    for region_weight in weights:
        mean = attention_pool(image, region_weight)
        second = attention_pool(image * image, region_weight)
        stats += [mean, torch.sqrt(torch.clamp(second - mean * mean, min=0.0) + 1e-6)]
    return torch.cat(stats, dim=1)


class ClassificationHead(nn.Module):
    """Pooled features -> MLP -> subtype logits.

    ``classifier_pooling="global"``: global average + max pooling of the ``classifier_scales``
    deepest encoder stages (average summarises the organ context; max keeps a small, strongly
    responding lesion from vanishing entirely). ``"lesion_attention"``: the final decoder
    features averaged under the predicted lesion probability and under the pancreas probability
    (:func:`region_pooled_features`), and the input's attenuation statistics under the lesion,
    its core, rim and surrounding shell, and the pancreas (:func:`region_intensity_statistics`):
    the subtype is a property of the lesion, and these describe exactly the voxels the
    segmentation calls lesion. ``classifier_context`` adds the global encoder pooling to it.

    fc1's input is laid out as [avg, max] per encoder scale (shallowest first; when pooled), then
    [lesion-pooled, pancreas-pooled] decoder channels, then the 2 * intensity_regions *
    in_channels intensity statistics; channel pruning relies on this order.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.scales = config.classifier_scales
        self.lesion_attention = config.classifier_pooling == "lesion_attention"
        self.intensity_regions = config.intensity_regions
        self.context = not self.lesion_attention or config.classifier_context
        pooled = 2 * sum(config.features[-self.scales :]) if self.context else 0
        if self.lesion_attention:
            pooled += 2 * config.features[0] + 2 * config.intensity_regions * config.in_channels
        self.fc1 = nn.Linear(pooled, config.classifier_hidden)
        self.norm = (
            nn.LayerNorm(config.classifier_hidden) if config.classifier_norm else nn.Identity()
        )
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.fc2 = nn.Linear(config.classifier_hidden, config.num_subtypes)

    def forward(
        self,
        skips: Sequence[torch.Tensor],
        decoder_features: torch.Tensor,
        seg_logits: torch.Tensor,
        image: torch.Tensor,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``skips``: encoder outputs; ``decoder_features``: what feeds ``seg_head``; ``image``:
        the network input; ``reference``: see :meth:`MultiTaskUNet.forward`."""
        return self.classify(self.pool(skips, decoder_features, seg_logits, image, reference))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """fc1's input [B, F] (:meth:`pool`) -> subtype logits [B, S]."""
        hidden = self.norm(self.fc1(pooled))
        return self.fc2(self.dropout(self.act(hidden)))

    def pool(
        self,
        skips: Sequence[torch.Tensor],
        decoder_features: torch.Tensor,
        seg_logits: torch.Tensor,
        image: torch.Tensor,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The pooled features fc1 reads, [B, F] float32 (layout: see the class docstring)."""
        pooled = []
        if self.context:
            for feature in skips[-self.scales :]:
                pooled.append(F.adaptive_avg_pool3d(feature, 1).flatten(1).float())
                pooled.append(F.adaptive_max_pool3d(feature, 1).flatten(1).float())
        if self.lesion_attention:
            # Detached weights: the classifier then looks where the segmentation says the lesion
            # is and cannot move the mask to suit itself (e.g. onto a lesion-like structure
            # outside the pancreas).
            # Not detaching cost lesion Dice and spread the weights outside the lesion, with no
            # gain in subtype F1.
            probability = class_probabilities(seg_logits.detach().float())
            if reference is not None:
                probability = teacher_forced_probability(probability, *reference)
            # The decoder features are read, not trained, by the classifier: with its gradient
            # flowing into them (and teacher forcing making that gradient strong) segmentation
            # learned markedly slower.
            region = region_pooled_features(decoder_features.detach(), probability)
            intensity = region_intensity_statistics(image, probability, self.intensity_regions)
            pooled += [region, intensity]
        return torch.cat(pooled, dim=1)


def teacher_forced_probability(
    probability: torch.Tensor, label: torch.Tensor, use: torch.Tensor
) -> torch.Tensor:
    """``probability`` with the samples where ``use`` [B] is true replaced by one-hot ``label``.

    Early in training the predicted lesion probability is noise, so attention pooled under it
    carries no subtype evidence and the classifier learns only the prior; pooling under the
    reference mask for a share of the patches lets it learn what a lesion of each subtype looks
    like while the segmentation catches up, and the rest keep it used to predicted masks.
    """
    one_hot = F.one_hot(label.long(), probability.shape[1]).movedim(-1, 1).to(probability.dtype)
    return torch.where(use.view(-1, 1, 1, 1, 1), one_hot, probability)


class MultiTaskUNet(nn.Module):
    """``forward(x [B, C, D, H, W]) -> (seg_logits [B, classes, D, H, W], cls_logits [B, subtypes])``.

    With ``config.deep_supervision`` and in training mode the segmentation output is a list of
    logits at decreasing resolutions (full resolution first); in eval mode, and therefore in every
    exported graph, it is always the plain tensor.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else UNetConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.seg_head = nn.Conv3d(self.config.features[0], self.config.num_classes, kernel_size=1)
        # Lower-resolution heads exist only when trained with deep supervision, so that a plain
        # network carries no unused weights.
        lower = self.config.features[1:-1][::-1] if self.config.deep_supervision else ()
        self.ds_heads = nn.ModuleList(
            nn.Conv3d(c, self.config.num_classes, kernel_size=1) for c in lower
        )
        self.cls_head = ClassificationHead(self.config)
        self.apply(_init_weights)

    def forward(
        self,
        x: torch.Tensor,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
        statistics_image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """``reference``, for training only: ``(label [B, D, H, W], use [B] bool)``; the
        classifier pools under the reference label instead of the prediction where ``use``.
        ``statistics_image``, for training only: the input before intensity augmentation, which
        the classifier's attenuation statistics then read instead of ``x`` (at inference the two
        are the same image)."""
        skips, decoded, seg_logits = self._segment(x)
        image = x if statistics_image is None else statistics_image
        cls_logits = self.cls_head(skips, decoded[-1], seg_logits, image, reference)
        if self.training and self.config.deep_supervision:
            # decoded[:-1] is deepest first; heads were built in the same order.
            lower = [head(feat) for head, feat in zip(self.ds_heads, decoded[:-1], strict=True)]
            return [seg_logits, *reversed(lower)], cls_logits
        return seg_logits, cls_logits

    def head_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(seg_logits, pooled)`` as the eval-mode forward computes them: ``pooled`` [B, F] is
        what the subtype head's :meth:`ClassificationHead.classify` maps to the logits. Used to
        refit the head on features of the runtime's tiles (:mod:`edgepanc.training.head_refit`).
        """
        skips, decoded, seg_logits = self._segment(x)
        return seg_logits, self.cls_head.pool(skips, decoded[-1], seg_logits, x)

    def _segment(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        if not _is_exporting():
            check_input_shape(x.shape, self.config)
        skips = self.encoder(x)
        decoded = self.decoder(skips)
        return skips, decoded, self.seg_head(decoded[-1])


def _is_exporting() -> bool:
    # Python-side shape checks would be baked into a traced graph as constants; skip them there.
    return bool(
        torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
    )


def _init_weights(module: nn.Module) -> None:
    # Kaiming for LeakyReLU as nnU-Net does; zero bias so the norm layers start neutral.
    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


__all__ = [
    "CLASSIFIER_POOLINGS",
    "ClassificationHead",
    "Decoder",
    "Encoder",
    "MultiTaskUNet",
    "UNetConfig",
    "attention_pool",
    "box_max",
    "check_input_shape",
    "class_probabilities",
    "normalized_attention",
    "region_pooled_features",
    "teacher_forced_probability",
]
