"""Channel pruning and fake quantization on tiny networks (no data, a second or two)."""

from __future__ import annotations

import pytest
import torch

from edgepanc.networks import MultiTaskUNet, UNetConfig, count_parameters, estimate_flops
from edgepanc.quantization.config import QuantizeConfig
from edgepanc.quantization.pruning import (
    accumulate_taylor_scores,
    magnitude_scores,
    prunable_layers,
    prune_network,
    pruned_features,
)
from edgepanc.quantization.qat import insert_fake_quant, remove_fake_quant

RATIO = 0.5
SHAPE = (2, 1, 16, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny(
    norm: str, deep_supervision: bool = False, pooling: str = "lesion_attention"
) -> MultiTaskUNet:
    torch.manual_seed(0)
    config = UNetConfig(
        features=(4, 8, 16),
        classifier_hidden=8,
        classifier_scales=2,
        classifier_dropout=0.0,
        norm=norm,
        deep_supervision=deep_supervision,
        classifier_pooling=pooling,
    )
    return MultiTaskUNet(config).eval()


def silence_channels(model: MultiTaskUNet, ratio: float) -> None:
    """Zero a random share of every prunable layer's output channels (weights, bias, norm).

    Such a channel outputs exactly 0 after its LeakyReLU, so removing it changes nothing, and its
    importance is 0, so a correct pruner removes exactly these channels.
    """
    widths = pruned_features(model.config.features, ratio)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer, level in prunable_layers(model).values():
            conv = getattr(layer, "conv", layer)
            channels = conv.out_channels
            dead = torch.randperm(channels, generator=generator)[: channels - widths[level]]
            if conv is layer:  # ConvTranspose3d: weights are [in, out, ...]
                layer.weight[:, dead] = 0
            else:
                conv.weight[dead] = 0
                layer.norm.weight[dead] = 0
                layer.norm.bias[dead] = 0
            conv.bias[dead] = 0


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("pooling", ["lesion_attention", "global"])
def test_pruning_silent_channels_keeps_outputs_exactly(
    norm: str, deep_supervision: bool, pooling: str
) -> None:
    model = tiny(norm, deep_supervision, pooling)
    silence_channels(model, RATIO)
    pruned = prune_network(model, RATIO, "l1").eval()
    x = torch.randn(SHAPE)
    with torch.no_grad():
        seg, cls = model(x)
        seg_small, cls_small = pruned(x)
    assert pruned.config.features == (2, 4, 8)
    assert torch.allclose(seg, seg_small, atol=1e-4)
    assert torch.allclose(cls, cls_small, atol=1e-5)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_pruned_network_is_smaller_dense_and_loadable(criterion: str) -> None:
    model = tiny("instance")
    pruned = prune_network(model, RATIO, criterion)
    assert count_parameters(pruned) < 0.4 * count_parameters(model)
    assert estimate_flops(pruned, SHAPE) < 0.4 * estimate_flops(model, SHAPE)
    # A plain MultiTaskUNet: its config alone rebuilds it and loads its weights.
    rebuilt = MultiTaskUNet(UNetConfig.from_dict(pruned.config.to_dict()))
    rebuilt.load_state_dict(pruned.state_dict())
    assert not any(
        isinstance(m, torch.nn.utils.parametrize.ParametrizationList) for m in pruned.modules()
    )


def test_magnitude_scores_follow_the_weights() -> None:
    model = tiny("batch")
    block = model.encoder.stages[0].blocks[0]
    with torch.no_grad():
        block.conv.weight[1] *= 100.0
    scores = magnitude_scores(model, p=1)["encoder.stages.0.blocks.0"]
    assert int(scores.argmax()) == 1


def test_taylor_criterion_uses_gradients() -> None:
    model = tiny("instance")
    x = torch.randn(SHAPE)
    target = torch.randint(0, 3, (2, 16, 16, 16))

    def loss(outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(outputs[0], target)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = accumulate_taylor_scores(model, [(x, target)], loss)
    assert set(scores) == set(prunable_layers(model))
    assert all(s.shape[0] > 0 and torch.isfinite(s).all() for s in scores.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruned = prune_network(model, RATIO, "taylor", scores)
    assert pruned.config.features == (2, 4, 8)
    with pytest.raises(ValueError, match="taylor_scores"):
        prune_network(model, RATIO, "taylor")


def test_fake_quant_keeps_parameters_and_comes_out_cleanly() -> None:
    model = tiny("batch").train()
    parameters = {id(p) for p in model.parameters()}
    keys = set(model.state_dict())
    state = insert_fake_quant(model)
    assert {id(p) for p in model.parameters()} == parameters  # the optimiser's view is intact
    seg, cls = model(torch.randn(SHAPE))
    (seg.mean() + cls.mean()).backward()
    assert model.seg_head.parametrizations.weight.original.grad.abs().sum() > 0
    # The forward pass really rounds: an INT8 weight differs from the fp32 one.
    assert not torch.equal(model.seg_head.weight, model.seg_head.parametrizations.weight.original)
    remove_fake_quant(state)
    assert set(model.state_dict()) == keys


@pytest.mark.parametrize("ratio", [0.0, -0.1, 0.95])
def test_config_refuses_ratio_outside_range(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"pruning ratio must be in \(0, 0.9\]"):
        QuantizeConfig(model="m", data="d", out="o", prune=ratio)
