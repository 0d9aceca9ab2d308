"""``edgepanc quantize``: from a trained bundle to a quantized bundle with measured variants.

The stages (``edgepanc/quantization/stages/``), in order, over one context:

1. inputs: every input checked before any work; calibration (training) and validation cases
   prepared once;
2. fp32: the reference (PyTorch) and the fp32 ONNX export, checked against PyTorch;
3. INT8: activation type and layer placement measured on this CPU, post-training quantization
   (calibration method chosen by validation accuracy), quantization-aware training;
4. TensorRT: fp16 and INT8 engines where TensorRT and a GPU exist; OpenVINO: the fp32 export
   computed in bf16 (native bf16 only) and NNCF INT8, where OpenVINO and NNCF are installed;
5. pruning: the pruned, fine-tuned network, exported and quantized like the full one;
6. assembly: every variant timed per patch through the runtime's backends, the default chosen,
   the report and ``model.json`` written.

Every variant is scored on the validation cases with the training stage's scoring. The new
bundle is assembled in a hidden staging folder beside ``--out`` and renamed into place at the
end, so a failure leaves nothing behind; the input bundle is only read. An ensemble
(:mod:`edgepanc.ensemble`) is compressed member by member, each with the same settings, into
one new ensemble folder (:func:`run_quantize_ensemble`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from edgepanc.blas import blas_on_one_thread
from edgepanc.bundle import ModelBundle
from edgepanc.ensemble import read_ensemble, write_ensemble
from edgepanc.quantization.config import QuantizeConfig
from edgepanc.quantization.stages import fp32, int8, pruning, tensorrt
from edgepanc.quantization.stages.assembly import assemble
from edgepanc.quantization.stages.context import QuantizeContext
from edgepanc.quantization.stages.inputs import check_inputs, check_output_folder, make_context
from edgepanc.quantization.stages.openvino import build_openvino

ALL_CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def run_quantize(config: QuantizeConfig) -> ModelBundle:
    """Build the quantized bundle at ``config.out``; nothing is left there if anything fails."""
    inputs = check_inputs(config)
    with _staged(config.out) as staging, blas_on_one_thread():
        torch.manual_seed(config.seed)
        bundle = compress(make_context(config, inputs, staging))
    bundle.path = config.out
    return bundle


def run_quantize_ensemble(
    config: QuantizeConfig, on_member: Callable[[str], None] | None = None
) -> list[ModelBundle]:
    """Compress every member of the ensemble at ``config.model`` with ``config``'s settings into
    a new ensemble at ``config.out`` (each member's own report in its folder); every member's
    inputs are checked before any work, and nothing is left at ``config.out`` if one fails.

    Example: ``[b.default_artifact for b in run_quantize_ensemble(config)]`` ->
    ``["openvino_bf16", "openvino_bf16", "openvino_bf16"]``.
    """
    ensemble = read_ensemble(config.model)
    check_output_folder(config.out)
    names = [member.path.name for member in ensemble.members]
    checked = [
        check_inputs(dataclasses.replace(config, model=member.path, out=config.out / name))
        for name, member in zip(names, ensemble.members, strict=True)
    ]
    bundles = []
    with _staged(config.out) as staging, blas_on_one_thread():
        for name, member, inputs in zip(names, ensemble.members, checked, strict=True):
            if on_member is not None:
                on_member(name)
            # the member's record names where it will live; its files go to the staging folder
            member_config = dataclasses.replace(config, model=member.path, out=config.out / name)
            (staging / name).mkdir()
            torch.manual_seed(config.seed)
            bundles.append(compress(make_context(member_config, inputs, staging / name)))
        write_ensemble(staging, names, {**ensemble.provenance, "quantized_from": str(config.model)})
    for name, bundle in zip(names, bundles, strict=True):
        bundle.path = config.out / name
    return bundles


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A hidden staging folder beside ``out``, renamed to ``out`` when the block succeeds and
    removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    try:
        yield staging
        if out.exists():
            out.rmdir()  # checked empty before; rename cannot replace a folder otherwise
        # mkdtemp made the staging folder private; the bundle gets the usual folder permissions.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def compress(ctx: QuantizeContext) -> ModelBundle:
    """Run the stages into ``ctx.staging``; return the new bundle (written there)."""
    config = ctx.config
    methods = (
        ALL_CALIBRATION_METHODS
        if config.calibration_method == "auto"
        else (config.calibration_method,)
    )
    method = methods[0]  # the calibration of QAT, TensorRT and the pruned INT8 unless PTQ chooses
    activation_type: str | None = None  # chosen on this CPU when INT8 is asked for
    model = fp32.reference(ctx)
    if {"onnx", "int8", "tensorrt", "openvino"} & set(config.export):
        exported, fp32_onnx = fp32.export(ctx, model)
        if config.wants_int8:
            activation_type, layers = int8.choose_activation_type(ctx, fp32_onnx)
            if config.wants_ptq:
                method = int8.post_training(
                    ctx, fp32_onnx, exported, methods, activation_type, layers
                )
            if config.wants_qat:
                int8.quantization_aware(ctx, model, method, activation_type, layers)
        if "tensorrt" in config.export:
            tensorrt.build_engines(ctx, fp32_onnx, exported, method)
        if "openvino" in config.export:
            build_openvino(ctx, fp32_onnx, exported)
    pruned_network = None
    if config.prune is not None:
        small = pruning.prune(ctx, model, config.prune)
        pruned_network = small.config
        if {"onnx", "int8"} & set(config.export):
            small_exported, small_onnx = fp32.export(ctx, small, pruned=True)
            if activation_type is not None:  # set exactly when config.wants_int8
                layers = int8.place_layers(ctx, small_onnx, activation_type)
                int8.post_training(
                    ctx, small_onnx, small_exported, (method,), activation_type, layers, pruned=True
                )
    return assemble(ctx, activation_type, pruned_network)
