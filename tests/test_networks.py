"""The multi-task UNet: shapes, configs, presets, BN folding, cost counting, ONNX, bf16, and the
classifier's lesion-attention pooling."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
from edgepanc.networks.blocks import ConvNormAct, InstanceNorm
from edgepanc.networks.unet import (
    ClassificationHead,
    attention_pool,
    box_max,
    class_probabilities,
    lesion_surroundings,
    normalized_attention,
    region_intensity_statistics,
    region_pooled_features,
    teacher_forced_probability,
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


POOLINGS = ("lesion_attention", "global")


@pytest.fixture
def tiny() -> MultiTaskUNet:
    return build_network("tiny").eval()


@pytest.fixture(params=POOLINGS)
def tiny_any_pooling(request) -> MultiTaskUNet:
    return build_network(PRESETS["tiny"].replace(classifier_pooling=request.param)).eval()


def test_default_parameter_count_matches_original_model():
    count = count_parameters(build_network("default"))
    print(f"default preset: {count:,} trainable parameters")
    assert abs(count - ORIGINAL_MODEL_PARAMETERS) / ORIGINAL_MODEL_PARAMETERS < 0.05


def test_cpu_preset_is_small():
    count = count_parameters(build_network("cpu"))
    assert 1_000_000 <= count <= 3_000_000
    assert PRESETS["cpu"].min_divisor == 16


def test_presets_default_to_lesion_attention():
    assert all(c.classifier_pooling == "lesion_attention" for c in PRESETS.values())


def test_forward_shapes_on_non_cubic_input(tiny_any_pooling):
    x = torch.randn(2, 1, 16, 32, 24)
    with torch.no_grad():
        seg, cls = tiny_any_pooling(x)
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


def test_every_parameter_receives_a_gradient(tiny_any_pooling):
    model = tiny_any_pooling.train()
    seg, cls = model(torch.randn(2, 1, 8, 8, 8))
    (seg.square().mean() + cls.square().mean()).backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


def test_classification_loss_trains_only_the_classification_head():
    # The lesion-attention head reads detached attention weights and detached decoder features
    # (see ClassificationHead.forward): the subtype loss cannot pull the segmentation around.
    model = build_network("tiny").train()
    _, cls = model(torch.randn(2, 1, 8, 8, 8))
    cls.square().mean().backward()
    for name, parameter in model.named_parameters():
        if name.startswith("cls_head."):
            continue
        assert parameter.grad is None or not parameter.grad.any(), name
    assert model.cls_head.fc1.weight.grad is not None and model.cls_head.fc1.weight.grad.any()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_config_round_trips_through_json(pooling):
    config = UNetConfig(
        features=(8, 16, 32),
        norm="batch",
        deep_supervision=True,
        dropout=0.1,
        classifier_pooling=pooling,
    )
    restored = UNetConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert isinstance(restored.features, tuple)


def test_config_without_pooling_field_is_an_older_global_head():
    # model.json files written before the field existed hold the weights of a global-pooling head.
    global_head = PRESETS["tiny"].replace(classifier_pooling="global")
    older = global_head.to_dict()
    del older["classifier_pooling"]
    restored = UNetConfig.from_dict(older)
    assert restored == global_head
    state = MultiTaskUNet(global_head).state_dict()
    MultiTaskUNet(restored).load_state_dict(state)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"norm": "group"}, "norm must be one of"),
        ({"features": (8,)}, "at least two stages"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"classifier_scales": 9}, "classifier_scales"),
        ({"dropout": 1.0}, "dropout"),
        ({"classifier_pooling": "attention"}, "classifier_pooling must be one of"),
        ({"num_classes": 2}, "'lesion_attention' needs label 2"),
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


@pytest.mark.parametrize("pooling", POOLINGS)
def test_fold_batchnorm_is_numerically_equivalent(pooling):
    model = build_network(PRESETS["tiny"].replace(norm="batch", classifier_pooling=pooling))
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


def test_onnx_export_matches_pytorch(tiny_any_pooling, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    tiny = tiny_any_pooling
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
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    # no Softmax node: ONNX Runtime runs it on the class axis through transposes (unet.py)
    assert "Softmax" not in ops
    # the CPU norm's group_norm path is for eager runs only: the graph keeps one node per norm
    assert "InstanceNormalization" in ops and "GroupNormalization" not in ops
    if tiny.cls_head.lesion_attention:
        assert "Exp" in ops  # the written-out softmax of the lesion-attention pooling


def test_cpu_instance_norm_keeps_channels_last_and_the_instance_norm_values():
    norm = InstanceNorm(8, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(8) + 0.5)
        norm.bias.copy_(torch.randn(8))
    x = (torch.randn(2, 8, 6, 10, 12) * 3 + 1).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    y = norm(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    reference_input = x.detach().contiguous().requires_grad_()
    reference = F.instance_norm(reference_input, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(reference)
    y.backward(upstream)
    reference.backward(upstream)
    torch.testing.assert_close(x.grad, reference_input.grad, rtol=1e-4, atol=1e-5)
    # pruning and old checkpoints see the torch layer: same type, same state dict keys
    assert isinstance(norm, nn.InstanceNorm3d)
    assert norm.state_dict().keys() == nn.InstanceNorm3d(8, affine=True).state_dict().keys()
    blocks = [m for m in build_network("tiny").modules() if isinstance(m, ConvNormAct)]
    assert blocks and all(isinstance(block.norm, InstanceNorm) for block in blocks)


@pytest.mark.parametrize("size", [3, 5])
def test_box_max_is_the_max_over_the_whole_box(size):
    x = torch.randn(2, 1, 7, 9, 11)
    expected = F.max_pool3d(x, kernel_size=size, stride=1, padding=size // 2)
    assert torch.equal(box_max(x, size), expected)
    corner = torch.zeros(1, 1, 5, 5, 5)
    corner[0, 0, 0, 0, 0] = 1.0  # reaches exactly size // 2 voxels along every axis at once
    reach = size // 2
    assert box_max(corner, size)[0, 0, : reach + 1, : reach + 1, : reach + 1].min() == 1.0
    assert box_max(corner, size).sum() == (reach + 1) ** 3


def test_class_probabilities_are_the_softmax_over_classes():
    logits = torch.randn(2, 3, 4, 5, 6) * 30  # large logits: the max shift keeps exp finite
    logits[0, :, 0, 0, 0] = torch.tensor([1000.0, -1000.0, 0.0])
    probabilities = class_probabilities(logits)
    torch.testing.assert_close(probabilities, torch.softmax(logits, dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, 4, 5, 6))


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


def test_normalized_attention_sums_to_one_per_sample():
    probability = torch.rand(3, 4, 5, 6)
    probability[1] *= 1e-4  # a patch with next to no lesion still gets a proper average
    weights = normalized_attention(probability)
    assert weights.shape == (3, 1, 4, 5, 6)
    sums = weights.sum(dim=(1, 2, 3, 4))
    torch.testing.assert_close(sums[[0, 2]], torch.ones(2), rtol=0, atol=1e-5)
    # Total lesion mass 6e-3 against eps 1e-6: the weights still sum to 1 within 0.1%.
    assert 0.999 < float(sums[1]) <= 1.0
    torch.testing.assert_close(weights[0, 0], probability[0] / probability[0].sum())


def test_attention_pool_is_the_weighted_mean():
    features = torch.zeros(1, 2, 2, 2, 2)
    features[0, 0] = torch.arange(8.0).reshape(2, 2, 2)
    features[0, 1] = 5.0
    probability = torch.zeros(1, 2, 2, 2)
    probability[0, 0, 0, 0] = 0.75  # voxel 0 (value 0) and voxel 7 (value 7), weighted 3:1
    probability[0, 1, 1, 1] = 0.25
    pooled = attention_pool(features, normalized_attention(probability))
    torch.testing.assert_close(
        pooled, torch.tensor([[0.75 * 0 + 0.25 * 7, 5.0]]), atol=1e-5, rtol=0
    )


def test_region_pooled_features_average_lesion_and_pancreas_voxels():
    features = torch.randn(2, 3, 4, 4, 4)
    labels = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    labels[:, 1:3, 1:3, :] = 1
    labels[:, 1, 1, 1:3] = 2
    # Confident logits: the softmax is one-hot up to e^-30.
    seg_logits = 30.0 * F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()
    pooled = region_pooled_features(features, torch.softmax(seg_logits, dim=1))
    lesion_mean = features[:, :, 1, 1, 1:3].mean(dim=-1)
    pancreas_mean = features.permute(0, 2, 3, 4, 1)[labels > 0].reshape(2, -1, 3).mean(dim=1)
    torch.testing.assert_close(pooled, torch.cat((lesion_mean, pancreas_mean), dim=1))


def test_attention_head_reads_the_lesion_not_the_background():
    config = PRESETS["tiny"]
    head = ClassificationHead(config).eval()
    skips = [torch.randn(1, c, 4, 4, 4) for c in config.features]
    decoder_features = torch.randn(1, config.features[0], 8, 8, 8)
    seg_logits = torch.zeros(1, 3, 8, 8, 8)
    seg_logits[:, 0] = 20.0  # background everywhere ...
    seg_logits[:, 0, 2:5, 2:5, 2:5] = 0.0
    seg_logits[:, 2, 2:5, 2:5, 2:5] = 20.0  # ... except a lesion cube
    far, inside = decoder_features.clone(), decoder_features.clone()
    far[..., 6:, 6:, 6:] += 5.0
    inside[..., 3, 3, 3] += 5.0
    with torch.no_grad():
        image = torch.randn(1, 1, 8, 8, 8)
        reference = head(skips, decoder_features, seg_logits, image)
        change_far = (head(skips, far, seg_logits, image) - reference).abs().max()
        change_inside = (head(skips, inside, seg_logits, image) - reference).abs().max()
    assert change_far < 1e-5
    assert change_inside > 1e-3


def test_global_head_ignores_the_decoder():
    head = ClassificationHead(PRESETS["tiny"].replace(classifier_pooling="global")).eval()
    skips = [torch.randn(1, c, 4, 4, 4) for c in PRESETS["tiny"].features]
    seg_logits = torch.randn(1, 3, 8, 8, 8)
    with torch.no_grad():
        image = torch.randn(1, 1, 8, 8, 8)
        first = head(skips, torch.randn(1, 4, 8, 8, 8), seg_logits, image)
        second = head(skips, torch.randn(1, 4, 8, 8, 8), seg_logits, torch.randn(1, 1, 8, 8, 8))
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_region_weights_are_squared_probabilities():
    # Squaring keeps a faint probability spread over the background from outweighing the lesion.
    features = torch.tensor([10.0, 20.0]).reshape(1, 1, 1, 1, 2)
    probability = torch.tensor([[0.2, 0.6], [0.2, 0.2], [0.6, 0.2]])  # [class, voxel]
    seg_logits = probability.log().reshape(1, 3, 1, 1, 2)
    lesion, pancreas = region_pooled_features(features, torch.softmax(seg_logits, dim=1))[0]
    # Lesion 0.6 and 0.2 -> weights 0.36 : 0.04; pancreas (1 - background) 0.8 and 0.4 -> 4 : 1.
    # rtol 1e-5: eps 1e-6 against a total weight of 0.4 shifts the result by 2.5e-6 relatively.
    torch.testing.assert_close(lesion, torch.tensor(0.9 * 10 + 0.1 * 20), rtol=1e-5, atol=0)
    torch.testing.assert_close(pancreas, torch.tensor(0.8 * 10 + 0.2 * 20), rtol=1e-5, atol=0)


def test_intensity_statistics_are_the_lesion_and_pancreas_attenuation():
    image = torch.zeros(1, 1, 2, 2, 2)
    image[0, 0, 0, 0, :] = torch.tensor([1.0, 3.0])  # the lesion: mean 2, std 1
    image[0, 0, 1] = 5.0  # pancreas without lesion
    seg_logits = torch.zeros(1, 3, 2, 2, 2)
    seg_logits[:, 0] = 30.0  # background ...
    seg_logits[:, 0, 0, 0, :] = 0.0
    seg_logits[:, 2, 0, 0, :] = 30.0  # ... lesion ...
    seg_logits[:, 0, 1] = 0.0
    seg_logits[:, 1, 1] = 30.0  # ... and pancreas
    lesion_mean, lesion_std, pancreas_mean, pancreas_std = region_intensity_statistics(
        image, torch.softmax(seg_logits, dim=1), regions=2
    )[0]
    assert lesion_mean.item() == pytest.approx(2.0, abs=1e-4)
    assert lesion_std.item() == pytest.approx(1.0, abs=1e-3)
    # pancreas + lesion: values 1, 3 and four 5s
    values = torch.tensor([1.0, 3.0, 5.0, 5.0, 5.0, 5.0])
    assert pancreas_mean.item() == pytest.approx(values.mean().item(), abs=1e-4)
    assert pancreas_std.item() == pytest.approx(values.std(unbiased=False).item(), abs=1e-3)


def test_teacher_forcing_pools_under_the_reference_label_only_where_asked():
    probability = torch.softmax(torch.randn(2, 3, 2, 2, 2), dim=1)
    label = torch.zeros(2, 2, 2, 2, dtype=torch.long)
    label[:, 0, 0, 0] = 2
    label[:, 1] = 1
    mixed = teacher_forced_probability(probability, label, torch.tensor([True, False]))
    torch.testing.assert_close(mixed[0], F.one_hot(label[0], 3).permute(3, 0, 1, 2).float())
    torch.testing.assert_close(mixed[1], probability[1])


def test_teacher_forced_head_reads_the_reference_lesion():
    torch.manual_seed(0)
    model = MultiTaskUNet(PRESETS["tiny"]).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    label = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    label[:, 4:10, 4:10, 4:10] = 1
    label[:, 6:8, 6:8, 6:8] = 2
    use = torch.tensor([True])
    with torch.no_grad():
        forced = model(x, reference=(label, use))[1]
        free = model(x)[1]
        changed = model(x, reference=(torch.roll(label, 5, dims=1), use))[1]
    assert (forced - free).abs().max() > 1e-4
    assert (forced - changed).abs().max() > 1e-4


def test_classifier_hidden_layer_is_normalised_so_it_cannot_all_go_negative():
    # The failure this guards against: every fc1 unit negative -> constant subtype output.
    head = ClassificationHead(PRESETS["tiny"]).eval()
    with torch.no_grad():
        head.fc1.bias.fill_(-100.0)
        pooled = torch.randn(4, head.fc1.in_features)
        hidden = head.norm(head.fc1(pooled))
    assert (hidden > 0).float().mean() > 0.2
    assert hidden.std(dim=0).mean() > 0.1


def test_bundle_without_classifier_norm_loads_the_unnormalised_head():
    data = PRESETS["tiny"].to_dict()
    data.pop("classifier_norm")
    config = UNetConfig.from_dict(data)
    assert config.classifier_norm is False
    assert isinstance(MultiTaskUNet(config).cls_head.norm, torch.nn.Identity)


def test_lesion_surroundings_split_a_cube_into_core_rim_and_shell():
    lesion = torch.zeros(1, 9, 9, 9)
    lesion[:, 2:7, 2:7, 2:7] = 1.0  # a 5^3 cube
    core, rim, shell = lesion_surroundings(lesion)
    assert core.sum().item() == 27  # the inner 3^3
    assert rim.sum().item() == 125 - 27
    assert shell[0, 4, 4, 0].item() == 1.0 and shell[0, 4, 4, 4].item() == 0.0
    assert shell.sum().item() == 9**3 - 125  # two voxels round a cube centred in 9^3


def test_shell_statistics_see_a_bright_ring_outside_the_lesion():
    image = torch.zeros(1, 1, 9, 9, 9)
    image[..., 1:8, 1:8, 1:8] = 3.0  # bright ring ...
    image[..., 2:7, 2:7, 2:7] = 0.0  # ... round a dark lesion
    probability = torch.zeros(1, 3, 9, 9, 9)
    probability[:, 0] = 1.0
    probability[:, 0, 2:7, 2:7, 2:7] = 0.0
    probability[:, 2, 2:7, 2:7, 2:7] = 1.0
    stats = region_intensity_statistics(image, probability, regions=5)[0]
    assert stats.shape == (10,)
    lesion_mean, shell_mean = stats[0].item(), stats[6].item()
    assert lesion_mean == pytest.approx(0.0, abs=1e-5)
    assert shell_mean == pytest.approx(3.0 * (7**3 - 5**3) / (9**3 - 5**3), abs=1e-4)


def test_statistics_image_feeds_only_the_subtype_head():
    torch.manual_seed(0)
    model = MultiTaskUNet(PRESETS["tiny"]).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        seg, cls = model(x)
        same_seg, same_cls = model(x, statistics_image=x.clone())
        other_seg, other_cls = model(x, statistics_image=x + 0.5)
    torch.testing.assert_close(same_cls, cls)
    torch.testing.assert_close(other_seg, seg)  # segmentation reads x alone
    assert (other_cls - cls).abs().max() > 1e-4
