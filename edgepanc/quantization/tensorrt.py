"""TensorRT engines (fp16 and INT8) built from the exported ONNX graphs, on an NVIDIA GPU.

fp16: the fp32 ONNX graph built with the FP16 flag. INT8: TensorRT's explicit quantization from
a QDQ ONNX graph, which needs symmetric activations (zero point 0), so the INT8 engine is built
from a graph quantized with signed INT8 activations (``quantize_int8(..., activation_type=
"qint8", symmetric_activations=True)``). The engines are serialized ``.engine`` files that
:class:`edgepanc.backends.tensorrt_backend.TensorRTPredictor` loads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from edgepanc.backends.devices import cuda_available
from edgepanc.io.atomic import write_bytes_atomic
from edgepanc.quantization.onnx_export import INPUT_NAME

# The runtime's tile batches are small; a profile up to this batch covers them.
MAX_ENGINE_BATCH = 4
WORKSPACE_BYTES = 4 << 30


def tensorrt_skip_reason() -> str | None:
    """Why no engine can be built here, or None when TensorRT and a CUDA device are present."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package (and torch-tensorrt) is not installed"
    if not cuda_available():
        return "no CUDA device"
    return None


def build_engine(
    onnx_path: Path, engine_path: Path, patch_size: Sequence[int], precision: str
) -> Path:
    """Parse ``onnx_path`` and write a serialized engine for ``precision`` ("fp16" or "int8")."""
    # tensorrt is optional (the [gpu] extra, NVIDIA machines only): imported where it builds
    import tensorrt as trt

    if precision not in ("fp16", "int8"):
        raise ValueError(f"TensorRT precision must be fp16 or int8, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)  # fp16 where INT8 is not possible, in both modes
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes
    profile = builder.create_optimization_profile()
    shape = tuple(int(s) for s in patch_size)
    profile.set_shape(INPUT_NAME, (1, 1, *shape), (1, 1, *shape), (MAX_ENGINE_BATCH, 1, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    write_bytes_atomic(engine_path, bytes(serialized))
    return Path(engine_path)
