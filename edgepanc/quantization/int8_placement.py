"""Which layers run in INT8: chosen layer by layer from ONNX Runtime's own kernel timings.

Why: INT8 is not faster everywhere. ONNX Runtime's 3D INT8 convolutions with few channels at
full resolution can be several times slower than their fp32 kernels while the deeper, wider
layers gain, so quantizing every layer can leave the whole network slower than fp32 (figures in
docs/measurements/readme_history.md and docs/measurements/gpu_recipe_sweep.md). Which layers win
depends on the CPU's integer instructions, so the choice is measured on the machine that runs
``quantize``, the way TensorRT picks kernels, rather than written down.

The measurement: one fully quantized model (QDQ) and its fp32 source each run a few patches
with ONNX Runtime's profiler; a layer stays INT8 where its INT8 cost took less time than the fp32
kernel of the same node. The INT8 cost is the layer's kernel (the fused QLinearConv, or the Conv
between DequantizeLinear and QuantizeLinear where ONNX Runtime did not fuse) plus the conversions
it brings: the QuantizeLinear of its input (shared among the layers that read the same tensor)
and the Quantize/DequantizeLinear of its output. Without them a layer saving 0.3 ms in its
kernel but spending 0.5 ms converting 8 MB of activations would count as a gain.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime

# ONNX Runtime names a fused node "<original name>_token_<n>" in its profile.
_FUSED_SUFFIX = re.compile(r"_token_\d+$")
_KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class LayerTiming:
    """Median kernel time of one quantizable node in fp32 and in its INT8 form."""

    name: str
    op_type: str
    fp32_ms: float
    int8_ms: float | None  # None: the INT8 graph had no kernel under this name
    conversion_ms: float = 0.0  # Quantize/DequantizeLinear this layer brings (module docstring)

    @property
    def faster_in_int8(self) -> bool:
        return self.int8_ms is not None and self.int8_ms + self.conversion_ms < self.fp32_ms

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"int8": self.faster_in_int8}


def profiled_node_name(event_name: str) -> str:
    """The ONNX node name behind a profiler event name (fusion and kernel suffixes removed)."""
    name = event_name.removesuffix(_KERNEL_SUFFIX)
    return _FUSED_SUFFIX.sub("", name)


def kernel_times(
    model_path: Path,
    patch_size: Sequence[int],
    runs: int = 3,
    intra_op_threads: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Median kernel milliseconds per ONNX node over ``runs`` patches (after one warm-up)."""
    batch = np.random.default_rng(seed).standard_normal((1, 1, *patch_size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edgepanc-profile-") as scratch:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        feed = {session.get_inputs()[0].name: batch}
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith(_KERNEL_SUFFIX):
            per_node[profiled_node_name(event["name"])].append(event["dur"] / 1000.0)
    # The first run of each node is the warm-up; it pays one-off kernel selection.
    return {
        name: statistics.median(times[1:] if len(times) > 1 else times)
        for name, times in per_node.items()
    }


def quantizable_nodes(model_path: Path, op_types: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, op_type)`` of the nodes of ``op_types`` in an ONNX file, in graph order."""
    # onnx is the optional [quant] extra: imported where a graph is read, not with the module
    import onnx

    wanted = set(op_types)
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [(node.name, node.op_type) for node in graph.node if node.op_type in wanted]


def layer_timings(
    fp32_path: Path,
    int8_path: Path,
    patch_size: Sequence[int],
    op_types: Iterable[str],
    runs: int = 3,
    intra_op_threads: int | None = None,
) -> list[LayerTiming]:
    """fp32 against INT8 kernel time for every quantizable node of ``fp32_path``."""
    fp32 = kernel_times(fp32_path, patch_size, runs, intra_op_threads)
    int8 = kernel_times(int8_path, patch_size, runs, intra_op_threads)
    conversions = conversion_nodes(int8_path)
    return [
        LayerTiming(
            name,
            op_type,
            fp32.get(name, 0.0),
            int8.get(name),
            sum(int8.get(node, 0.0) * share for node, share in conversions.get(name, [])),
        )
        for name, op_type in quantizable_nodes(fp32_path, op_types)
    ]


def conversion_nodes(qdq_path: Path) -> dict[str, list[tuple[str, float]]]:
    """Per node of a QDQ graph: the (Quantize/DequantizeLinear node, share) pairs it brings.

    Input side: the QuantizeLinear behind the DequantizeLinear that feeds input 0, shared
    equally among every DequantizeLinear reading it. Output side: the QuantizeLinear on output 0
    and the DequantizeLinear nodes after it.
    """
    # onnx is the optional [quant] extra: imported where a graph is read, not with the module
    import onnx

    graph = onnx.load(str(qdq_path), load_external_data=False).graph
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    result: dict[str, list[tuple[str, float]]] = {}
    for node in graph.node:
        pairs: list[tuple[str, float]] = []
        dequantize = producer.get(node.input[0]) if node.input else None
        if dequantize is not None and dequantize.op_type == "DequantizeLinear":
            quantize = producer.get(dequantize.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                readers = len(consumers[quantize.output[0]]) or 1
                pairs.append((quantize.name, 1.0 / readers))
        for quantize in consumers[node.output[0]] if node.output else []:
            if quantize.op_type == "QuantizeLinear":
                pairs.append((quantize.name, 1.0))
                pairs += [
                    (dq.name, 1.0)
                    for dq in consumers[quantize.output[0]]
                    if dq.op_type == "DequantizeLinear"
                ]
        if pairs:
            result[node.name] = pairs
    return result


def fp32_layers(timings: Sequence[LayerTiming]) -> list[str]:
    """The nodes to leave in fp32: those not measured faster in INT8.

    When no layer is faster in INT8 the answer is empty (quantize everything): an "INT8" model
    with every layer excluded would be the fp32 model under another name.
    """
    slow = [t.name for t in timings if not t.faster_in_int8]
    return [] if len(slow) == len(timings) else slow


def module_name(node_name: str) -> str:
    """The PyTorch module behind an exported node: ``/a/b.0/conv/Conv`` -> ``a.b.0.conv``."""
    parts = node_name.strip("/").split("/")
    return ".".join(parts[:-1]) if len(parts) > 1 else parts[0]


def placement_summary(timings: Sequence[LayerTiming], excluded: Sequence[str]) -> str:
    """One line: how many layers run INT8 and the kernel time either way."""
    fp32 = set(excluded)
    kept = [t for t in timings if t.name not in fp32]
    fp32_total = sum(t.fp32_ms for t in timings)
    mixed_total = sum(
        t.fp32_ms if t.name in fp32 or t.int8_ms is None else t.int8_ms + t.conversion_ms
        for t in timings
    )
    return (
        f"INT8 in {len(kept)} of {len(timings)} layers (the others measured faster in fp32 on "
        f"this CPU); layers {fp32_total:.1f} ms in fp32 -> {mixed_total:.1f} ms as placed "
        "(INT8 kernels with their conversions)"
    )
