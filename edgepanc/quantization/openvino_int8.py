"""INT8 post-training quantization for OpenVINO with NNCF, written as an OpenVINO IR.

NNCF reads the same fp32 ONNX file ONNX Runtime's quantizer does, measures activation ranges on
calibration patches (the ones :func:`edgepanc.quantization.ptq.calibration_patches` draws from the
training cases) and inserts FakeQuantize operations that OpenVINO's CPU plugin runs as INT8
convolutions. The result is an ``.xml`` graph with its ``.bin`` weights beside it, which
:class:`edgepanc.backends.openvino_backend.OpenVinoPredictor` runs with ``precision="int8"``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepanc.errors import InputError
from edgepanc.io.atomic import atomic_path

# NNCF's presets: "performance" quantizes activations symmetrically, "mixed" asymmetrically,
# which suits the network's PReLU and instance-norm outputs that are not centred on zero.
OPENVINO_INT8_PRESETS: tuple[str, ...] = ("performance", "mixed")
# The subtype head's operations read float: NNCF would otherwise put 8-bit FakeQuantize on its
# attention weights and on the image under them, which moved the subtype probabilities by 0.20
# (total variation, mean over 16 training cases); with the head in float, 0.009
# (docs/measurements/openvino_int8_head.md). One quantizer is left, on fc1's output before its
# normalisation, whose generated name carries no head prefix.
FLOAT_HEAD_PATTERNS: tuple[str, ...] = (r".*cls_head.*",)


@dataclass(frozen=True)
class OpenVinoInt8Config:
    """How NNCF quantizes: its preset, how many calibration patches it uses at most, and which
    operations (regular expressions over their names) it leaves in float.

    Example: ``OpenVinoInt8Config(preset="mixed", subset_size=64)``.
    """

    preset: str = "mixed"
    subset_size: int = 300
    fast_bias_correction: bool = True
    float_patterns: tuple[str, ...] = FLOAT_HEAD_PATTERNS

    def __post_init__(self) -> None:
        if self.preset not in OPENVINO_INT8_PRESETS:
            raise ValueError(f"preset must be one of {OPENVINO_INT8_PRESETS}, got {self.preset!r}")
        if self.subset_size < 1:
            raise ValueError(f"subset_size must be at least 1, got {self.subset_size}")


def calibration_batches(patches: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One float32 ``[1, 1, D, H, W]`` array per calibration patch.

    Accepts a stacked ``[N, 1, D, H, W]`` array (what ``calibration_patches`` returns) or a
    sequence of ``[1, D, H, W]`` / ``[1, 1, D, H, W]`` patches.

    Example: ``len(calibration_batches(np.zeros((4, 1, 16, 16, 16))))`` -> ``4``.
    """
    batches = []
    for item in patches:
        array = np.asarray(item, dtype=np.float32)
        if array.ndim == 4:
            array = array[None]
        if array.ndim != 5 or array.shape[:2] != (1, 1):
            raise ValueError(
                f"a calibration patch must be [1, D, H, W] or [1, 1, D, H, W], got {list(array.shape)}"
            )
        batches.append(np.ascontiguousarray(array))
    if not batches:
        raise ValueError("INT8 calibration needs at least one patch")
    shapes = {b.shape for b in batches}
    if len(shapes) > 1:
        raise ValueError(f"calibration patches differ in shape: {sorted(shapes)}")
    return batches


def quantize_openvino_int8(
    fp32_onnx: str | Path,
    out_xml: str | Path,
    patches: np.ndarray | Sequence[np.ndarray],
    config: OpenVinoInt8Config | None = None,
) -> Path:
    """Write an NNCF INT8 OpenVINO IR of ``fp32_onnx`` calibrated on ``patches`` to ``out_xml``.

    ``out_xml`` and its ``.bin`` appear only when quantization succeeded (atomic renames, the
    weights first so that an ``.xml`` never names weights that are not there yet).

    Example: ``quantize_openvino_int8("model_fp32.onnx", "model_int8.xml", patches)`` ->
    ``Path("model_int8.xml")`` with ``model_int8.bin`` beside it.
    """
    import nncf
    import openvino

    config = config or OpenVinoInt8Config()
    fp32_onnx, out_xml = Path(fp32_onnx), Path(out_xml)
    if not fp32_onnx.is_file():
        raise InputError(fp32_onnx, "fp32 ONNX model not found")
    if out_xml.suffix != ".xml":
        raise ValueError(
            f"an OpenVINO IR is written as .xml (with a .bin beside it), got {out_xml}"
        )
    batches = calibration_batches(patches)
    model = openvino.Core().read_model(str(fp32_onnx))
    _check_patch_shape(fp32_onnx, model, batches[0].shape)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(batches),
        preset=getattr(nncf.QuantizationPreset, config.preset.upper()),
        subset_size=min(config.subset_size, len(batches)),
        fast_bias_correction=config.fast_bias_correction,
        # validate=False: a network without a subtype head has nothing the pattern names
        ignored_scope=nncf.IgnoredScope(patterns=list(config.float_patterns), validate=False),
    )
    out_bin = out_xml.with_suffix(".bin")
    # The bin context is inner so that it is renamed first; the xml is the file readers look for.
    with atomic_path(out_xml) as tmp_xml, atomic_path(out_bin) as tmp_bin:
        written_bin = tmp_xml.with_suffix(".bin")
        try:
            # Unquantized weights stay fp32 (the default would compress them to fp16).
            openvino.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
            os.replace(written_bin, tmp_bin)
        finally:
            with contextlib.suppress(FileNotFoundError):
                written_bin.unlink()
    return out_xml


def _check_patch_shape(path: Path, model: object, shape: tuple[int, ...]) -> None:
    expected = model.input(0).get_partial_shape()  # type: ignore[attr-defined]
    spatial = [dim.get_length() if dim.is_static else None for dim in list(expected)[1:]]
    if any(want is not None and want != got for want, got in zip(spatial, shape[1:], strict=True)):
        raise ValueError(
            f"{path} takes [B, {', '.join(map(str, spatial))}] patches, the calibration patches "
            f"are {list(shape)}"
        )


__all__ = [
    "FLOAT_HEAD_PATTERNS",
    "OPENVINO_INT8_PRESETS",
    "OpenVinoInt8Config",
    "calibration_batches",
    "quantize_openvino_int8",
]
