"""The physical limit: sustained throughput of the network's main operation on this machine.

A 3x3x3 convolution, 32 -> 32 channels on a 64^3 volume (batch 1), in fp32 PyTorch, fp32 ONNX
Runtime and INT8 (QDQ, per-channel static quantization) ONNX Runtime, and OpenVINO fp32, bf16
(where the CPU computes it natively) and INT8 (NNCF). Its GFLOP/s is the most a network of such
layers can reach here with each engine; test_end_to_end.py reports the share the runtime gets.
"""

from __future__ import annotations

import pytest

from harness import CONV_FLOPS, conv_limit_seconds, rounds
from results import Recorder, Spread

VARIANTS = [
    ("torch", "fp32"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
]


@pytest.mark.parametrize(("backend", "precision"), VARIANTS)
def test_conv_throughput(backend: str, precision: str, bench_dir, recorder: Recorder) -> None:
    from edgepanc.backends import BackendUnavailable

    try:
        seconds = conv_limit_seconds(backend, precision, bench_dir / "conv", rounds(5))
    except BackendUnavailable as exc:  # bf16 on a CPU without it, or no openvino installed
        pytest.skip(str(exc))
    spread = Spread.of(seconds)
    gflops = CONV_FLOPS / spread.median / 1e9
    recorder.record("conv", backend=backend, precision=precision, seconds=spread, gflops=gflops)
    print(f"conv 32->32 3x3x3 on 64^3, {backend} {precision}: {gflops:.1f} GFLOP/s")
    # A real measurement of real work: 14.5 GFLOP cannot take under a millisecond on a CPU.
    assert spread.low > 1e-3
