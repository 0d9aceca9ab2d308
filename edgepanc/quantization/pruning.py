"""Structured channel pruning of :class:`MultiTaskUNet` into a smaller, dense MultiTaskUNet.

Every conv (and every decoder ConvTranspose3d) keeps its most important output channels; the
number kept per encoder/decoder level is ``round(features[i] * (1 - ratio))`` so that the result
is an ordinary MultiTaskUNet whose smaller :class:`UNetConfig` is stored in ``model.json`` and
which every backend loads. The kept channels are copied into the new network, and every consumer
of a pruned tensor is sliced to match: the next conv, the decoder's concatenated skip (upsampled
half first, skip half second), the norms, the segmentation heads and the classifier's pooled
features (average then max, per encoder scale, then the lesion- and pancreas-weighted means of the
final decoder features when the head uses lesion attention).

Why not torch-pruning: version 1.6.1 fails on this network (an index error while grouping the
classifier's concatenation of pooled features from several encoder stages), and a per-layer
pruner would not give the uniform per-stage widths a UNetConfig can describe.

Channel importance (``criterion``):
    ``l1`` / ``l2``: the Lp norm of the channel's weights, scaled by what the norm after it does
    to that channel's magnitude: ``|gamma| / sqrt(var + eps)`` for batch norm (as folding would),
    ``|gamma| / ||w||_2`` for instance norm (it divides the weight's scale out again).
    ``taylor``: first-order Taylor estimate of the loss change when the channel is removed,
    ``|sum(w * dL/dw)|`` over the channel, summed over a few training batches (Molchanov et al.,
    2017), from gradients the caller accumulates with :func:`accumulate_taylor_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from edgepanc.networks import ConvNormAct, MultiTaskUNet, UNetConfig

Scores = dict[str, torch.Tensor]  # prunable layer name -> importance per output channel


def pruned_features(features: tuple[int, ...], ratio: float) -> tuple[int, ...]:
    """Channels kept per stage when removing ``ratio`` of them (at least one each)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")
    return tuple(max(1, round(f * (1.0 - ratio))) for f in features)


def prunable_layers(model: MultiTaskUNet) -> dict[str, tuple[nn.Module, int]]:
    """Every pruned layer by name, with the stage (feature level) whose width it sets.

    Conv blocks are :class:`ConvNormAct` modules; decoder upsamplings are ConvTranspose3d.
    """
    layers: dict[str, tuple[nn.Module, int]] = {}
    num_levels = model.config.num_stages
    for level, stage in enumerate(model.encoder.stages):
        for b, block in enumerate(stage.blocks):
            layers[f"encoder.stages.{level}.blocks.{b}"] = (block, level)
    for j, (upsample, stage) in enumerate(
        zip(model.decoder.upsamples, model.decoder.stages, strict=True)
    ):
        level = num_levels - 2 - j
        layers[f"decoder.upsamples.{j}"] = (upsample, level)
        for b, block in enumerate(stage.blocks):
            layers[f"decoder.stages.{j}.blocks.{b}"] = (block, level)
    return layers


def magnitude_scores(model: MultiTaskUNet, p: int) -> Scores:
    """Lp-norm importance of every output channel of every prunable layer (see module doc)."""
    scores: Scores = {}
    for name, (layer, _) in prunable_layers(model).items():
        weight = _out_major_weight(layer).detach().float()
        norm = weight.abs().sum(dim=1) if p == 1 else weight.pow(2).sum(dim=1).sqrt()
        scores[name] = norm * _norm_scale(layer, weight)
    return scores


def accumulate_taylor_scores(
    model: MultiTaskUNet,
    batches: Iterable[tuple[torch.Tensor, ...]],
    loss_fn: Callable[..., torch.Tensor],
) -> Scores:
    """Taylor importance ``|sum(w * dL/dw)|`` per output channel, summed over ``batches``.

    ``loss_fn(model_outputs, *targets)`` returns the training loss for one batch ``(x, *targets)``.
    The model's weights are left unchanged (no optimiser step); its gradients are cleared.
    """
    layers = prunable_layers(model)
    scores: Scores = {}
    was_training = model.training
    model.train()
    try:
        for x, *targets in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), *targets).backward()
            for name, (layer, _) in layers.items():
                weight_layer = layer.conv if isinstance(layer, ConvNormAct) else layer
                contribution = _out_major(
                    weight_layer, weight_layer.weight * weight_layer.weight.grad
                )
                batch_score = contribution.detach().sum(dim=1).abs()
                scores[name] = scores.get(name, 0) + batch_score
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not scores:
        raise ValueError("Taylor pruning needs at least one batch of training data")
    return scores


def select_channels(
    model: MultiTaskUNet, ratio: float, scores: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Sorted indices of the output channels each prunable layer keeps."""
    widths = pruned_features(model.config.features, ratio)
    kept = {}
    for name, (_, level) in prunable_layers(model).items():
        top = torch.topk(scores[name], widths[level]).indices
        kept[name] = torch.sort(top).values
    return kept


def prune_network(
    model: MultiTaskUNet,
    ratio: float,
    criterion: str = "l1",
    taylor_scores: Mapping[str, torch.Tensor] | None = None,
) -> MultiTaskUNet:
    """A new, smaller, dense MultiTaskUNet holding ``model``'s most important channels.

    ``model`` is not modified. ``taylor_scores`` (from :func:`accumulate_taylor_scores`) is
    required for ``criterion="taylor"``.
    """
    if criterion == "taylor":
        if taylor_scores is None:
            raise ValueError("criterion 'taylor' needs taylor_scores")
        scores = dict(taylor_scores)
    elif criterion in ("l1", "l2"):
        scores = magnitude_scores(model, p=1 if criterion == "l1" else 2)
    else:
        raise ValueError(f"unknown pruning criterion {criterion!r}")
    kept = select_channels(model, ratio, scores)
    config = model.config.replace(features=pruned_features(model.config.features, ratio))
    pruned = MultiTaskUNet(config)
    _copy_kept_weights(model, pruned, kept)
    return pruned.train(model.training)


def _copy_kept_weights(
    source: MultiTaskUNet, target: MultiTaskUNet, kept: Mapping[str, torch.Tensor]
) -> None:
    # Walks the network in data-flow order, carrying the kept indices of each tensor to its users.
    config: UNetConfig = source.config
    previous = torch.arange(config.in_channels)
    skip_indices = []
    for level, (src_stage, dst_stage) in enumerate(
        zip(source.encoder.stages, target.encoder.stages, strict=True)
    ):
        for b, (src, dst) in enumerate(zip(src_stage.blocks, dst_stage.blocks, strict=True)):
            out = kept[f"encoder.stages.{level}.blocks.{b}"]
            _copy_block(src, dst, out, previous)
            previous = out
        skip_indices.append(previous)

    decoder_outputs = []
    num_levels = config.num_stages
    for j in range(num_levels - 1):
        level = num_levels - 2 - j
        up_src, up_dst = source.decoder.upsamples[j], target.decoder.upsamples[j]
        up_out = kept[f"decoder.upsamples.{j}"]
        # ConvTranspose3d weights are [in, out, k, k, k].
        _assign(up_dst.weight, up_src.weight[previous][:, up_out])
        _assign(up_dst.bias, up_src.bias[up_out])
        # The stage sees cat(upsampled, skip): the skip's channels start after the upsampled ones.
        previous = torch.cat((up_out, config.features[level] + skip_indices[level]))
        for b, (src, dst) in enumerate(
            zip(source.decoder.stages[j].blocks, target.decoder.stages[j].blocks, strict=True)
        ):
            out = kept[f"decoder.stages.{j}.blocks.{b}"]
            _copy_block(src, dst, out, previous)
            previous = out
        decoder_outputs.append(previous)

    _copy_head(source.seg_head, target.seg_head, decoder_outputs[-1])
    # Deep-supervision heads exist only when trained with them (then one per lower decoder level).
    for head_src, head_dst, inputs in zip(
        source.ds_heads, target.ds_heads, decoder_outputs[:-1], strict=False
    ):
        _copy_head(head_src, head_dst, inputs)
    _copy_classifier(source, target, skip_indices, decoder_outputs[-1])


def _copy_classifier(
    source: MultiTaskUNet,
    target: MultiTaskUNet,
    skip_indices: list[torch.Tensor],
    final_decoder_indices: torch.Tensor,
) -> None:
    # fc1 sees, per pooled encoder scale: [avg over C channels, max over C channels]; then, with
    # lesion attention, [lesion-weighted, pancreas-weighted] means of the final decoder channels.
    columns, offset = [], 0
    scales = source.config.classifier_scales
    for width, indices in zip(
        source.config.features[-scales:], skip_indices[-scales:], strict=True
    ):
        if not source.cls_head.context:
            break
        columns += [offset + indices, offset + width + indices]
        offset += 2 * width
    if source.cls_head.lesion_attention:
        width = source.config.features[0]
        columns += [offset + final_decoder_indices, offset + width + final_decoder_indices]
        offset += 2 * width
        # The input-intensity statistics follow; they are not channels and are never pruned.
        statistics = 2 * source.config.intensity_regions * source.config.in_channels
        columns.append(offset + torch.arange(statistics))
    src, dst = source.cls_head, target.cls_head
    _assign(dst.fc1.weight, src.fc1.weight[:, torch.cat(columns)])
    _assign(dst.fc1.bias, src.fc1.bias)
    # The hidden layer (and its LayerNorm) keeps its width: pruning removes conv channels only.
    dst.norm.load_state_dict(src.norm.state_dict())
    _assign(dst.fc2.weight, src.fc2.weight)
    _assign(dst.fc2.bias, src.fc2.bias)


def _copy_block(
    src: ConvNormAct, dst: ConvNormAct, out: torch.Tensor, inputs: torch.Tensor
) -> None:
    _assign(dst.conv.weight, src.conv.weight[out][:, inputs])
    _assign(dst.conv.bias, src.conv.bias[out])
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(src.norm, name, None)
        if value is not None:
            _assign(getattr(dst.norm, name), value[out])
    if getattr(src.norm, "num_batches_tracked", None) is not None:
        dst.norm.num_batches_tracked.copy_(src.norm.num_batches_tracked)


def _copy_head(src: nn.Conv3d, dst: nn.Conv3d, inputs: torch.Tensor) -> None:
    _assign(dst.weight, src.weight[:, inputs])
    _assign(dst.bias, src.bias)


def _assign(target: torch.Tensor, value: torch.Tensor) -> None:
    if target.shape != value.shape:
        raise RuntimeError(f"pruning bug: shape {tuple(value.shape)} != {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(value)


def _out_major(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as [out_channels, everything else]."""
    if isinstance(layer, nn.ConvTranspose3d):
        weight = weight.transpose(0, 1)
    return weight.reshape(weight.shape[0], -1)


def _out_major_weight(layer: nn.Module) -> torch.Tensor:
    conv = layer.conv if isinstance(layer, ConvNormAct) else layer
    return _out_major(conv, conv.weight)


def _norm_scale(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(layer, ConvNormAct):
        return torch.ones(weight.shape[0])
    norm = layer.norm
    gamma = (
        norm.weight.detach().abs()
        if getattr(norm, "weight", None) is not None
        else torch.ones(weight.shape[0])
    )
    if isinstance(norm, nn.BatchNorm3d) and norm.running_var is not None:
        return gamma / torch.sqrt(norm.running_var.detach() + norm.eps)
    if isinstance(norm, nn.InstanceNorm3d):
        return gamma / weight.pow(2).sum(dim=1).sqrt().clamp_min(1e-12)
    return gamma
