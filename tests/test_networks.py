"""The multi-task UNet: shapes, configs, presets, BN folding, cost counting, ONNX and bf16."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from edgepanc.networks import (
    PRESETS,
    MultiTaskUNet,
    UNetConfig,
    build_network,
    count_batchnorms,
    count_parameters,
    estimate_flops,
    estimate_macs,
    fold_batchnorm,
)

ORIGINAL_MODEL_PARAMETERS = 22_970_150


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine has two cores shared by parallel jobs; one thread keeps timings stable.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny() -> MultiTaskUNet:
    return build_network("tiny").eval()


def test_default_parameter_count_matches_original_model():
    count = count_parameters(build_network("default"))
    print(f"default preset: {count:,} trainable parameters")
    assert abs(count - ORIGINAL_MODEL_PARAMETERS) / ORIGINAL_MODEL_PARAMETERS < 0.05


def test_cpu_preset_is_small():
    count = count_parameters(build_network("cpu"))
    assert 1_000_000 <= count <= 3_000_000
    assert PRESETS["cpu"].min_divisor == 16


def test_forward_shapes_on_non_cubic_input(tiny):
    x = torch.randn(2, 1, 16, 32, 24)
    with torch.no_grad():
        seg, cls = tiny(x)
    assert seg.shape == (2, 3, 16, 32, 24)
    assert cls.shape == (2, 3)
    assert torch.isfinite(seg).all() and torch.isfinite(cls).all()


def test_min_divisor_is_two_to_the_downsamplings():
    assert UNetConfig(features=(4, 8, 16)).min_divisor == 4
    assert UNetConfig().min_divisor == 2 ** (len(UNetConfig().features) - 1)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 16, 18, 16), "multiple of 4"),
        ((1, 2, 16, 16, 16), "expected input"),
        ((16, 16, 16), "expected input"),
    ],
)
def test_bad_input_shape_is_a_clear_error(tiny, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny(torch.zeros(shape))


def test_deep_supervision_only_in_training():
    model = MultiTaskUNet(PRESETS["tiny"].replace(features=(4, 8, 16, 16), deep_supervision=True))
    x = torch.randn(1, 1, 16, 16, 16)
    model.train()
    seg, cls = model(x)
    assert [tuple(s.shape[2:]) for s in seg] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    assert cls.shape == (1, 3)
    model.eval()
    with torch.no_grad():
        seg_eval, _ = model(x)
    assert isinstance(seg_eval, torch.Tensor)
    assert seg_eval.shape == (1, 3, 16, 16, 16)


def test_every_parameter_receives_a_gradient(tiny):
    tiny.train()
    seg, cls = tiny(torch.randn(2, 1, 8, 8, 8))
    (seg.square().mean() + cls.square().mean()).backward()
    no_grad = [name for name, p in tiny.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


def test_config_round_trips_through_json():
    config = UNetConfig(features=(8, 16, 32), norm="batch", deep_supervision=True, dropout=0.1)
    restored = UNetConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert isinstance(restored.features, tuple)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"norm": "group"}, "norm must be one of"),
        ({"features": (8,)}, "at least two stages"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"classifier_scales": 9}, "classifier_scales"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_config_is_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**changes)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown UNetConfig keys: widht"):
        UNetConfig.from_dict({"widht": 3})


def test_build_network_rejects_unknown_preset():
    with pytest.raises(ValueError, match="unknown network preset 'huge'"):
        build_network("huge")


def test_structure_is_addressable_for_pruning(tiny):
    assert len(tiny.encoder.stages) == len(tiny.config.features)
    assert len(tiny.decoder.stages) == len(tiny.decoder.upsamples) == len(tiny.config.features) - 1
    first = tiny.encoder.stages[0].blocks[0]
    assert isinstance(first.conv, nn.Conv3d) and isinstance(first.norm, nn.InstanceNorm3d)
    assert tiny.seg_head.out_channels == 3
    assert tiny.cls_head.fc2.out_features == 3


def test_fold_batchnorm_is_numerically_equivalent():
    model = build_network(PRESETS["tiny"].replace(norm="batch"))
    # Non-trivial running statistics and affine parameters, as after training.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 8, 8, 8) * 3 + 1)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        expected = model(x)
        actual = folded(x)
    assert count_batchnorms(model) > 0, "the original must stay untouched"
    assert count_batchnorms(folded) == 0
    for e, a in zip(expected, actual, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_handles_sequential_pairs():
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2), nn.ReLU())
    model[1].running_mean.fill_(0.3)
    model[1].running_var.fill_(2.0)
    model.eval()
    x = torch.randn(1, 1, 4, 4, 4)
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_estimate_macs_matches_hand_count():
    conv = nn.Sequential(nn.Conv3d(2, 4, kernel_size=3, padding=1))
    assert estimate_macs(conv, (1, 2, 8, 8, 8)) == 4 * 8**3 * 2 * 27
    up = nn.Sequential(nn.ConvTranspose3d(4, 2, kernel_size=2, stride=2))
    assert estimate_macs(up, (1, 4, 4, 4, 4)) == 4 * 4**3 * 2 * 8
    linear = nn.Sequential(nn.Flatten(), nn.Linear(6, 5))
    assert estimate_macs(linear, (3, 6)) == 3 * 6 * 5
    assert estimate_flops(conv, (1, 2, 8, 8, 8)) == 2 * estimate_macs(conv, (1, 2, 8, 8, 8))


def test_estimate_macs_follows_network_width():
    narrow = build_network(PRESETS["tiny"])
    wide = build_network(PRESETS["tiny"].replace(features=(8, 16, 32)))
    shape = (1, 1, 16, 16, 16)
    # Convolution cost grows with in x out channels, so doubling every width is about 4x.
    ratio = estimate_macs(wide, shape) / estimate_macs(narrow, shape)
    assert 3.0 < ratio < 4.5
    assert narrow.training, "estimate_macs must restore the training mode"


def test_onnx_export_matches_pytorch(tiny, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            tiny,
            (torch.randn(1, 1, 16, 16, 16),),
            str(path),
            input_names=["image"],
            output_names=["seg_logits", "cls_logits"],
            dynamic_axes={name: {0: "batch"} for name in ("image", "seg_logits", "cls_logits")},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 16, 16, 16)  # another batch size than exported: the axis is dynamic
    seg_ort, cls_ort = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        seg, cls = tiny(x)
    np.testing.assert_allclose(seg_ort, seg.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cls_ort, cls.numpy(), rtol=1e-4, atol=1e-4)


def test_bf16_autocast_on_cpu(tiny):
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        seg32, cls32 = tiny(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            seg16, cls16 = tiny(x)
    assert seg16.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits: close, not equal, and the argmax mostly agrees.
    agreement = (seg16.float().argmax(1) == seg32.argmax(1)).float().mean()
    assert agreement > 0.9
    torch.testing.assert_close(cls16.float(), cls32, rtol=0.1, atol=0.1)
