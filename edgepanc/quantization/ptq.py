"""INT8 post-training static quantization for ONNX Runtime (QDQ format, per-channel weights).

Calibration patches are drawn from the preprocessed training cases by the training stage's own
sampler (:class:`edgepanc.training.sampling.PatchSampler`) with the training foreground share and no
augmentation, so activation ranges are measured on what the network sees in use.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepanc.io.atomic import atomic_path
from edgepanc.quantization.onnx_export import INPUT_NAME
from edgepanc.training.augmentation import AugmentationConfig
from edgepanc.training.sampling import PatchSampler, SamplingConfig

# Our names for ONNX Runtime's calibration methods.
CALIBRATION_METHOD_NAMES: dict[str, str] = {
    "minmax": "MinMax",
    "entropy": "Entropy",
    "percentile": "Percentile",
}
ACTIVATION_TYPES: tuple[str, ...] = ("quint8", "qint8")
# Only the compute-heavy ops: ONNX Runtime would otherwise also try InstanceNormalization, whose
# per-channel scale it cannot quantize; norms and activations stay fp32 between the INT8 convs.
QUANTIZED_OP_TYPES: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def calibration_patches(
    cases: Sequence[object],
    patch_size: Sequence[int],
    patches_per_case: int,
    lesion_fraction: float = 0.6,
    pancreas_fraction: float = 0.25,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``len(cases) * patches_per_case`` unaugmented patches from prepared cases.

    Returns the sampler's batch: ``image`` [N, 1, D, H, W] float32, ``label`` [N, D, H, W] int64,
    ``subtype`` [N]. ``cases`` are :class:`edgepanc.training.dataset.PreparedCase`; the foreground shares
    should be the ones the model was trained with (the defaults are the training defaults).
    """
    sampler = PatchSampler(
        cases,
        SamplingConfig(tuple(int(s) for s in patch_size), lesion_fraction, pancreas_fraction),
        AugmentationConfig.disabled(),
        seed=seed,
    )
    return sampler.sample_batch(len(cases) * patches_per_case)


def make_calibration_reader(patches: np.ndarray):
    """An ``onnxruntime.quantization.CalibrationDataReader`` yielding one patch per call."""
    # onnxruntime.quantization needs onnx, the optional [quant] extra: imported on use
    from onnxruntime.quantization import CalibrationDataReader

    class PatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._index >= len(patches):
                return None
            self._index += 1
            return {INPUT_NAME: np.ascontiguousarray(patches[self._index - 1 : self._index])}

        def rewind(self) -> None:
            self._index = 0

    return PatchReader()


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    patches: np.ndarray,
    method: str = "minmax",
    activation_type: str = "quint8",
    symmetric_activations: bool = False,
    exclude: Sequence[str] = (),
) -> Path:
    """Write a static INT8 QDQ model of ``fp32_path`` calibrated on ``patches`` to ``out_path``.

        Weights are symmetric signed INT8 per output channel; activations per tensor, unsigned or
        signed as ``activation_type`` says (which is faster depends on the CPU's integer dot-product
        instructions; measure). ``symmetric_activations`` fixes the activation zero point at 0, which
    TensorRT's explicit quantization requires. ``exclude`` names nodes left in fp32 (see
    :mod:`edgepanc.quantization.int8_placement`). Batch norm must already be folded into the convs.
    """
    # onnxruntime.quantization needs onnx, the optional [quant] extra: imported on use
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHOD_NAMES:
        raise ValueError(
            f"unknown calibration method {method!r}; choose {sorted(CALIBRATION_METHOD_NAMES)}"
        )
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"unknown activation type {activation_type!r}; choose {ACTIVATION_TYPES}")
    if len(patches) == 0:
        raise ValueError("INT8 calibration needs at least one patch")
    with tempfile.TemporaryDirectory(prefix="edgepanc-ptq-") as scratch:
        # Shape inference and graph clean-up first, as ONNX Runtime recommends for quantization.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with atomic_path(out_path) as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                make_calibration_reader(patches),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                nodes_to_exclude=list(exclude),
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8
                if activation_type == "quint8"
                else QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD_NAMES[method]),
                extra_options={"ActivationSymmetric": symmetric_activations},
            )
    return Path(out_path)
