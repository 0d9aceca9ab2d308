"""ONNX Runtime predictor for exported fp32 and INT8 (QDQ) graphs.

The graph must take ``image [B, 1, D, H, W]`` and return ``seg_logits`` and ``cls_logits``, the
names the compression stage exports with. The same class runs fp32 and quantized files: ONNX
Runtime executes the QuantizeLinear/DequantizeLinear pairs itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepanc.backends.base import (
    CLS_OUTPUT_NAME,
    INPUT_NAME,
    SEG_OUTPUT_NAME,
    BackendUnavailable,
    check_batch,
    writable_float32,
)
from edgepanc.errors import InputError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def onnxruntime_providers() -> list[str]:
    """Execution providers this machine's onnxruntime offers (empty when it is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def default_providers(device: str = "auto") -> list[str]:
    """CUDA first where offered and wanted, CPU always as the fallback."""
    available = onnxruntime_providers()
    if not available:
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)")
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise BackendUnavailable(
            f"device 'cuda' requested but onnxruntime offers only {', '.join(available)}"
        )
    use_cuda = device in ("auto", "cuda") and CUDA_PROVIDER in available
    return [CUDA_PROVIDER, CPU_PROVIDER] if use_cuda else [CPU_PROVIDER]


class OnnxRuntimePredictor:
    """Run an exported ONNX graph (fp32 or INT8 QDQ) through an ONNX Runtime session.

    ``precision`` is what the file holds, as recorded by the bundle (ONNX Runtime cannot tell a
    QDQ graph from its providers). ``intra_op_threads`` caps the threads of one operator (None:
    ONNX Runtime's default, all physical cores).
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        precision: str = "fp32",
        artifact: str | None = None,
    ) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise BackendUnavailable(
                "onnxruntime is not installed (pip install onnxruntime)"
            ) from exc
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "ONNX model file not found")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The CPU arena grows in doubling chunks and never gives memory back, which broke
        # --memory-budget; without it, tensors go back to the allocator after each run.
        options.enable_cpu_mem_arena = False
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=list(providers or default_providers())
            )
        except Exception as exc:  # ORT raises its own exception types for every parse failure
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise InputError(path, f"ONNX Runtime cannot load the model: {first_line}") from exc
        _check_io_names(path, self.session)
        self.path = path
        self.precision = precision
        self.artifact = artifact
        self.device = "cuda" if self.session.get_providers()[0] == CUDA_PROVIDER else "cpu"

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seg, cls = self.session.run(
            [SEG_OUTPUT_NAME, CLS_OUTPUT_NAME], {INPUT_NAME: check_batch(batch)}
        )
        return writable_float32(seg), writable_float32(cls)

    def __repr__(self) -> str:
        return f"OnnxRuntimePredictor({str(self.path)!r}, device={self.device!r}, precision={self.precision!r})"


def _check_io_names(path: Path, session: object) -> None:
    inputs = [i.name for i in session.get_inputs()]  # type: ignore[attr-defined]
    outputs = {o.name for o in session.get_outputs()}  # type: ignore[attr-defined]
    missing = [n for n in (SEG_OUTPUT_NAME, CLS_OUTPUT_NAME) if n not in outputs]
    if inputs != [INPUT_NAME] or missing:
        raise InputError(
            path,
            f"expected input '{INPUT_NAME}' and outputs '{SEG_OUTPUT_NAME}', '{CLS_OUTPUT_NAME}'; "
            f"the graph has inputs {inputs} and outputs {sorted(outputs)}",
        )


__all__ = ["OnnxRuntimePredictor", "default_providers", "onnxruntime_providers"]
