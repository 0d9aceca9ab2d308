"""Per-layer INT8 placement: profiler names, module names, the rule, and the exclusions applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgepanc.networks import build_network
from edgepanc.quantization.int8_placement import (
    LayerTiming,
    conversion_nodes,
    fp32_layers,
    kernel_times,
    layer_timings,
    module_name,
    placement_summary,
    profiled_node_name,
    quantizable_nodes,
)
from edgepanc.quantization.onnx_export import export_onnx
from edgepanc.quantization.ptq import QUANTIZED_OP_TYPES, quantize_int8
from edgepanc.quantization.qat import insert_fake_quant, remove_fake_quant

PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_network("tiny").eval()
    path = export_onnx(model, tmp_path_factory.mktemp("place") / "tiny.onnx", PATCH)
    return model, path


def calibration() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 1, *PATCH), dtype=np.float32)


def test_profiler_event_names_map_back_to_graph_nodes() -> None:
    assert profiled_node_name("/enc/Conv_token_12_kernel_time") == "/enc/Conv"
    assert profiled_node_name("/enc/Conv_kernel_time") == "/enc/Conv"
    # a node whose own name ends in digits keeps them
    assert profiled_node_name("/dec/Conv_3_kernel_time") == "/dec/Conv_3"


def test_every_quantizable_node_names_a_real_module(tiny_onnx) -> None:
    model, path = tiny_onnx
    modules = dict(model.named_modules())
    nodes = quantizable_nodes(path, QUANTIZED_OP_TYPES)
    assert len(nodes) >= 8
    for name, _ in nodes:
        assert module_name(name) in modules, name


def test_the_rule_keeps_int8_only_where_it_was_faster() -> None:
    timings = [
        LayerTiming("/a/Conv", "Conv", fp32_ms=10.0, int8_ms=80.0),
        LayerTiming("/b/Conv", "Conv", fp32_ms=4.0, int8_ms=2.0),
        LayerTiming("/c/Conv", "Conv", fp32_ms=1.0, int8_ms=None),
    ]
    assert fp32_layers(timings) == ["/a/Conv", "/c/Conv"]
    assert "INT8 in 1 of 3 layers" in placement_summary(timings, ["/a/Conv", "/c/Conv"])
    # INT8 slower everywhere: quantize everything rather than ship fp32 called INT8
    assert fp32_layers([timings[0], timings[2]]) == []
    # a kernel gain eaten by the conversions it brings is no gain
    converted = LayerTiming("/d/Conv", "Conv", fp32_ms=1.0, int8_ms=0.6, conversion_ms=0.5)
    assert not converted.faster_in_int8
    assert LayerTiming("/d/Conv", "Conv", 1.0, 0.6, conversion_ms=0.3).faster_in_int8


def test_each_layer_is_charged_its_own_conversions(tiny_onnx, tmp_path: Path) -> None:
    _, path = tiny_onnx
    int8 = quantize_int8(path, tmp_path / "int8.onnx", calibration(), "minmax")
    graph = onnx.load(str(int8)).graph
    ops = {n.name: n.op_type for n in graph.node}
    conversions = conversion_nodes(int8)
    convs = [n for n, _ in quantizable_nodes(path, ("Conv",))]
    for name in convs:
        pairs = conversions[name]
        kinds = [ops[node] for node, _ in pairs]
        # its input's QuantizeLinear, its output's QuantizeLinear and at least one Dequantize
        assert kinds.count("QuantizeLinear") == 2 and "DequantizeLinear" in kinds, name
        assert all(0 < share <= 1 for _, share in pairs)
    # the network input feeds one conv only: its QuantizeLinear is charged in full
    first = conversions[convs[0]][0]
    assert first[1] == 1.0


def test_measured_timings_cover_every_layer(tiny_onnx, tmp_path: Path) -> None:
    _, path = tiny_onnx
    int8 = quantize_int8(path, tmp_path / "int8.onnx", calibration(), "minmax")
    timings = layer_timings(path, int8, PATCH, QUANTIZED_OP_TYPES, runs=2, intra_op_threads=1)
    assert [t.name for t in timings] == [n for n, _ in quantizable_nodes(path, QUANTIZED_OP_TYPES)]
    convs = [t for t in timings if t.op_type == "Conv"]
    assert all(t.fp32_ms > 0 for t in convs)
    assert all(t.int8_ms is not None and t.int8_ms > 0 for t in convs)
    assert set(kernel_times(path, PATCH, runs=1)) >= {t.name for t in convs}


def _weight_producer(model: onnx.ModelProto, node_name: str) -> str:
    """'initializer' when the node reads its fp32 weight directly, else the producing op type."""
    node = next(n for n in model.graph.node if n.name == node_name)
    initializers = {i.name for i in model.graph.initializer}
    if node.input[1] in initializers:
        return "initializer"
    return next(n.op_type for n in model.graph.node if node.input[1] in n.output)


def test_excluded_layers_stay_fp32_and_the_rest_are_quantized(tiny_onnx, tmp_path: Path) -> None:
    _, path = tiny_onnx
    convs = [n for n, op in quantizable_nodes(path, ("Conv",))]
    excluded = convs[:2]
    out = quantize_int8(path, tmp_path / "mixed.onnx", calibration(), "minmax", exclude=excluded)
    model = onnx.load(str(out))
    for name in excluded:
        assert _weight_producer(model, name) == "initializer"
    for name in convs[2:]:
        assert _weight_producer(model, name) == "DequantizeLinear"


def test_qat_skips_the_layers_that_stay_fp32() -> None:
    model = build_network("tiny")
    skipped = {"encoder.stages.0.blocks.0.conv"}
    assert skipped <= dict(model.named_modules()).keys()
    state = insert_fake_quant(model, skip=skipped)
    modules = dict(model.named_modules())
    assert not hasattr(modules["encoder.stages.0.blocks.0.conv"], "input_fake_quant")
    assert hasattr(modules["encoder.stages.0.blocks.1.conv"], "input_fake_quant")
    assert len(state.layers) == sum(
        isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d | torch.nn.Linear)
        for m in model.modules()
    ) - len(skipped)
    remove_fake_quant(state)


def test_variants_are_timed_in_turns() -> None:
    import time

    from edgepanc.quantization.latency import interleaved_latencies

    calls: list[str] = []

    def predictor(name: str, seconds: float):
        def run(batch: np.ndarray) -> None:
            assert batch.shape == (1, 1, *PATCH)
            calls.append(name)
            time.sleep(seconds)

        return run

    latencies = interleaved_latencies(
        {"a": predictor("a", 0.0), "b": predictor("b", 0.02)}, PATCH, rounds=3
    )
    assert calls == ["a", "a", "b", "b"] * 3  # three turns: a settling call, then a timed one
    assert latencies["b"].median_ms >= 20.0 and latencies["b"].runs == 3
    assert latencies["a"].min_ms <= latencies["a"].median_ms <= latencies["a"].max_ms
