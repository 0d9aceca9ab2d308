"""``edgepanc quantize``: from a trained bundle to a quantized bundle with measured variants.

Steps: check every input before any work; prepare calibration (training) and validation cases
once; fp32 reference (PyTorch) -> fp32 ONNX (checked against PyTorch) -> INT8 PTQ (activation
type chosen by latency, calibration method by validation accuracy) -> QAT -> pruned + fine-tuned
(torch, ONNX fp32, ONNX INT8) -> TensorRT where possible; every variant timed per patch through
the runtime's backends and scored on the validation cases with the training stage's scoring.
The new bundle is assembled in a hidden staging folder beside ``--out`` and renamed into place
at the end, so a failure leaves nothing behind; the input bundle is only read.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepanc.bundle import (
    WEIGHTS_FILE,
    ModelBundle,
    load_bundle,
    provenance,
    save_bundle_metadata,
    save_weights,
)
from edgepanc.errors import BundleError, InputError
from edgepanc.networks import (
    MultiTaskUNet,
    count_batchnorms,
    count_parameters,
    estimate_flops,
    fold_batchnorm,
)
from edgepanc.networks.activation import network_activation_bytes_per_voxel
from edgepanc.quantization.config import QuantizeConfig
from edgepanc.quantization.report import (
    VariantResult,
    choose_default,
    qat_note,
    target_notes,
    write_report,
)

log = logging.getLogger("edgepanc.quantize")

REFERENCE = "torch_fp32"


# -- checks before any work ------------------------------------------------------------------


def check_output_folder(out: Path) -> None:
    """Refuse an existing non-empty ``out`` or a parent we cannot write into."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "output folder exists and is not empty; choose a new --out")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(out, f"cannot create the output folder: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(out, f"cannot write into {parent} (permission denied)")


def load_trained_bundle(path: Path) -> ModelBundle:
    """The input bundle; it must be a trained model with its weights."""
    bundle = load_bundle(path)
    if bundle.kind != "trained":
        raise BundleError(path, f"is a {bundle.kind!r} bundle; quantize needs a trained model")
    if not bundle.preprocessing:
        raise BundleError(path, "model.json has no preprocessing plan; not a trained model")
    return bundle


def pick_calibration_cases(cases: Sequence[Any], count: int, data: Path) -> list[Any]:
    """``count`` training cases, alternating subtypes so every subtype calibrates the ranges."""
    training = [c for c in cases if c.split == "train" and c.label is not None]
    if len(training) < count:
        raise InputError(
            data,
            f"only {len(training)} labelled training cases, --calibration-cases asks for {count}",
        )
    by_subtype: dict[Any, list[Any]] = {}
    for case in sorted(training, key=lambda c: c.case_id):
        by_subtype.setdefault(case.subtype, []).append(case)
    queues = list(by_subtype.values())
    picked: list[Any] = []
    while len(picked) < count:
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


def validation_cases(cases: Sequence[Any], limit: int | None, data: Path) -> list[Any]:
    """The data set's validation cases (at most ``limit``); they must exist and be labelled."""
    chosen = sorted(
        (c for c in cases if c.split == "validation" and c.label is not None),
        key=lambda c: c.case_id,
    )
    if not chosen:
        raise InputError(data, "no labelled validation cases to measure accuracy on")
    return chosen[:limit] if limit else chosen


@dataclass(frozen=True)
class CheckedInputs:
    """The inputs of a run, checked before anything is written."""

    bundle: ModelBundle
    calibration: list[Any]
    validation: list[Any]


def check_inputs(config: QuantizeConfig) -> CheckedInputs:
    """Raise an InputError (one line naming the file) for any unusable input."""
    from edgepanc.data.cases import discover_cases

    check_output_folder(config.out)
    bundle = load_trained_bundle(config.model)
    cases = discover_cases(config.data)
    return CheckedInputs(
        bundle,
        pick_calibration_cases(cases, config.calibration_cases, config.data),
        validation_cases(cases, config.max_validation_cases, config.data),
    )


# -- the run ---------------------------------------------------------------------------------


class QuantizeRun:
    """One ``edgepanc quantize`` run writing into a staging folder."""

    def __init__(self, config: QuantizeConfig, inputs: CheckedInputs, staging: Path) -> None:
        self.config = config
        self.staging = staging
        self.bundle = inputs.bundle
        self.calibration_source = inputs.calibration
        self.validation_source = inputs.validation
        self.plan = self.bundle.plan
        self.patch_size = tuple(int(s) for s in self.plan.patch_size)
        self.device = _resolve_device(config.device)
        self.variants: list[VariantResult] = []
        self.notes: list[str] = []
        self.trials: dict[str, Any] = {}
        self.predictors: dict[str, Any] = {}  # variant name -> its predictor, for timing
        self.placement: dict[Path, str] = {}  # fp32 ONNX file -> which layers run INT8

    # -- helpers

    def flops(self, model: torch.nn.Module) -> int:
        return estimate_flops(model, (1, 1, *self.patch_size))

    def measure(self, variant: VariantResult, predictor: Any) -> VariantResult:
        """Validation metrics of ``predictor`` now, latency later (:meth:`time_variants`)."""
        from edgepanc.quantization.evaluate_variants import evaluate_predictor

        variant.metrics = evaluate_predictor(predictor, self.val_cases, self.patch_size)
        log.info(
            "%s: whole DSC %.4f, lesion DSC %.4f, macro F1 %.4f",
            variant.name,
            variant.metrics["whole_dsc"],
            variant.metrics["lesion_dsc"],
            variant.metrics["macro_f1"],
        )
        self.variants.append(variant)
        self.predictors[variant.name] = predictor
        return variant

    def time_variants(self) -> None:
        """Latency per patch of every kept variant, timed in turns (see latency.py)."""
        from edgepanc.quantization.latency import interleaved_latencies

        kept = {v.name: self.predictors[v.name] for v in self.variants}
        latencies = interleaved_latencies(kept, self.patch_size, self.config.latency_runs)
        for variant in self.variants:
            variant.latency_ms = latencies[variant.name].median_ms
            log.info("%s: %.1f ms/patch", variant.name, variant.latency_ms)
        self.trials["latency_ms"] = {name: lat.to_dict() for name, lat in latencies.items()}

    def onnx_variant(
        self, name: str, file: str, model: torch.nn.Module, precision: str
    ) -> VariantResult:
        from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor

        path = self.staging / file
        variant = VariantResult(
            name,
            "onnxruntime",
            precision,
            file,
            count_parameters(model),
            self.flops(model),
            path.stat().st_size,
        )
        return self.measure(
            variant, OnnxRuntimePredictor(path, ["CPUExecutionProvider"], precision=precision)
        )

    def export_fp32(self, model: MultiTaskUNet, file: str) -> tuple[torch.nn.Module, Path]:
        """Fold batch norm (if any) and export; the ONNX graph is checked against PyTorch."""
        from edgepanc.quantization.onnx_export import compare_with_torch, export_onnx

        deployable = (
            fold_batchnorm(model) if count_batchnorms(model) else copy.deepcopy(model).eval()
        )
        path = export_onnx(deployable, self.staging / file, self.patch_size)
        random_patches = np.random.default_rng(self.config.seed).standard_normal(
            (2, 1, *self.patch_size), dtype=np.float32
        )
        agreement = {
            "random": compare_with_torch(model, path, random_patches).to_dict(),
            "validation": compare_with_torch(model, path, self.real_patches).to_dict(),
        }
        self.trials.setdefault("onnx_vs_torch", {})[file] = agreement
        log.info("%s vs PyTorch: %s", file, agreement)
        return deployable, path

    def finetune(self, model: MultiTaskUNet, epochs: int, prepare: Any = None) -> MultiTaskUNet:
        from edgepanc.quantization.finetune import FinetuneSettings, finetune, training_config_for
        from edgepanc.thermal import ThermalGuard

        settings = FinetuneSettings(
            epochs, self.config.steps_per_epoch, self.config.lr, self.device, self.config.seed
        )
        train_config = training_config_for(
            self.bundle.provenance.get("training", {}),
            self.config.data,
            self.staging,
            self.patch_size,
            settings,
        )
        return finetune(
            model, self.calibration_cases, self.plan, train_config, ThermalGuard.discover(), prepare
        )

    # -- stages

    def prepare_data(self) -> None:
        from edgepanc.quantization.ptq import calibration_patches
        from edgepanc.training.dataset import prepare_cases

        self.calibration_cases = prepare_cases(
            self.calibration_source, self.plan, "calibration cases"
        )
        self.val_cases = prepare_cases(self.validation_source, self.plan, "validation cases")
        training = self.bundle.provenance.get("training", {})
        shares = {
            key: float(training[key])
            for key in ("lesion_fraction", "pancreas_fraction")
            if key in training
        }
        batch = calibration_patches(
            self.calibration_cases,
            self.patch_size,
            self.config.calibration_patches_per_case,
            seed=self.config.seed,
            **shares,
        )
        self.calibration = batch["image"]
        self.calibration_labels = (batch["label"], batch["subtype"])
        self.real_patches = calibration_patches(
            self.val_cases[:4], self.patch_size, 1, seed=self.config.seed + 1, **shares
        )["image"]

    def reference(self) -> MultiTaskUNet:
        from edgepanc.backends.torch_backend import TorchPredictor

        model = self.bundle.load_network()
        shutil.copyfile(self.bundle.weights_path, self.staging / WEIGHTS_FILE)
        variant = VariantResult(
            REFERENCE,
            "torch",
            "fp32",
            WEIGHTS_FILE,
            count_parameters(model),
            self.flops(model),
            (self.staging / WEIGHTS_FILE).stat().st_size,
        )
        self.measure(variant, TorchPredictor(model, "cpu", "fp32"))
        return model

    def int8_ptq(
        self,
        fp32_onnx: Path,
        model: torch.nn.Module,
        prefix: str,
        methods: Sequence[str],
        exclude: Sequence[str] = (),
    ) -> str:
        """Try the calibration ``methods``; keep the most accurate; return the method kept.

        ``exclude``: nodes left in fp32 (:meth:`int8_exclusions`).
        """
        from edgepanc.metrics import combined_score
        from edgepanc.quantization.ptq import quantize_int8

        tried = []
        for method in methods:
            file = f"{prefix}_int8_{method}.onnx"
            quantize_int8(
                fp32_onnx,
                self.staging / file,
                self.calibration,
                method,
                self.activation_type,
                exclude=exclude,
            )
            variant = self.onnx_variant(f"{prefix}_int8_{method}", file, model, "int8")
            tried.append((combined_score(variant.metrics), -len(tried), variant))
        best = max(tried)[2]
        for _, _, variant in tried:
            if variant is not best:  # record every trial, keep only the best file
                self.variants.remove(variant)
                del self.predictors[variant.name]
                (self.staging / variant.file).unlink()
        self.trials[f"{prefix}_calibration"] = {
            v.name: {k: v.metrics[k] for k in ("whole_dsc", "lesion_dsc", "macro_f1")}
            for _, _, v in tried
        }
        best.notes = f"calibration {best.name.rsplit('_', 1)[-1]} (best of {', '.join(methods)})"
        if fp32_onnx in self.placement:
            best.notes += f"; {self.placement[fp32_onnx]}"
        return best.name.rsplit("_", 1)[-1]

    def choose_activation_type(self, fp32_onnx: Path) -> list[str]:
        """Time unsigned and signed INT8 activations on this CPU (in turns); keep the faster.

        Returns the layers of ``fp32_onnx`` to leave in fp32 (:meth:`int8_exclusions`).
        """
        from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor
        from edgepanc.quantization.latency import interleaved_latencies
        from edgepanc.quantization.ptq import ACTIVATION_TYPES, quantize_int8

        scratch = Path(tempfile.mkdtemp(dir=self.staging.parent, prefix=".act-"))
        try:
            predictors = {}
            for activation_type in ACTIVATION_TYPES:
                path = scratch / f"{activation_type}.onnx"
                quantize_int8(fp32_onnx, path, self.calibration[:2], "minmax", activation_type)
                predictors[activation_type] = OnnxRuntimePredictor(
                    path, ["CPUExecutionProvider"], precision="int8"
                )
            latencies = interleaved_latencies(predictors, self.patch_size, self.config.latency_runs)
            timings = {name: latency.median_ms for name, latency in latencies.items()}
            self.activation_type = min(timings, key=timings.get)
            self.trials["activation_type_ms"] = timings
            log.info("INT8 activations: %s ms per patch; using %s", timings, self.activation_type)
            # the winner is the every-layer INT8 model that layer placement profiles
            return self.int8_exclusions(fp32_onnx, scratch / f"{self.activation_type}.onnx")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def int8_exclusions(self, fp32_onnx: Path, every_layer: Path | None = None) -> list[str]:
        """The layers of ``fp32_onnx`` to leave in fp32 (none with ``--int8-layers all``).

        Measured here: ``every_layer`` (a fully quantized copy, made when not given) and the
        fp32 graph are profiled per node on this CPU (see :mod:`edgepanc.quantization.int8_placement`); every
        timing goes into the report's trials and its placement table.
        """
        if self.config.int8_layers == "all":
            return []
        from edgepanc.quantization.int8_placement import (
            fp32_layers,
            layer_timings,
            placement_summary,
        )
        from edgepanc.quantization.ptq import QUANTIZED_OP_TYPES, quantize_int8

        with tempfile.TemporaryDirectory(dir=self.staging.parent, prefix=".place-") as scratch:
            if every_layer is None:
                every_layer = Path(scratch) / "every_layer_int8.onnx"
                quantize_int8(
                    fp32_onnx, every_layer, self.calibration[:2], "minmax", self.activation_type
                )
            timings = layer_timings(
                fp32_onnx,
                every_layer,
                self.patch_size,
                QUANTIZED_OP_TYPES,
                self.config.latency_runs,
            )
        excluded = fp32_layers(timings)
        self.placement[fp32_onnx] = placement_summary(timings, excluded)
        self.trials.setdefault("int8_layers", {})[fp32_onnx.name] = {
            "summary": self.placement[fp32_onnx],
            "layers": [t.to_dict() for t in timings],
        }
        log.info("%s: %s", fp32_onnx.name, self.placement[fp32_onnx])
        return excluded

    def qat(self, model: MultiTaskUNet, method: str, exclude: Sequence[str] = ()) -> None:
        from edgepanc.quantization.int8_placement import module_name
        from edgepanc.quantization.ptq import quantize_int8
        from edgepanc.quantization.qat import insert_fake_quant, remove_fake_quant

        state = {}
        # Layers that will run in fp32 train without rounding.
        fp32_modules = {module_name(node) for node in exclude}

        def prepare(live: torch.nn.Module) -> None:
            state["fq"] = insert_fake_quant(live, skip=fp32_modules)

        tuned = self.finetune(copy.deepcopy(model), self.config.qat_epochs, prepare)
        if "fq" in state:
            remove_fake_quant(state["fq"])
        with tempfile.TemporaryDirectory(dir=self.staging.parent, prefix=".qat-") as scratch:
            from edgepanc.quantization.onnx_export import export_onnx

            deployable = fold_batchnorm(tuned) if count_batchnorms(tuned) else tuned.eval()
            fp32 = export_onnx(deployable, Path(scratch) / "qat_fp32.onnx", self.patch_size)
            quantize_int8(
                fp32,
                self.staging / "model_int8_qat.onnx",
                self.calibration,
                method,
                self.activation_type,
                exclude=exclude,
            )
        variant = self.onnx_variant("onnx_int8_qat", "model_int8_qat.onnx", tuned, "int8")
        variant.notes = (
            f"{self.config.qat_epochs} QAT epochs with fake-quantized weights and inputs, then "
            f"{method} calibration of the learned fp32 weights"
        )
        if exclude:
            variant.notes += f"; the same {len(exclude)} layers as PTQ left in fp32"

    def pruned(self, model: MultiTaskUNet) -> MultiTaskUNet:
        from edgepanc.backends.torch_backend import TorchPredictor
        from edgepanc.quantization.pruning import accumulate_taylor_scores, prune_network

        scores = None
        if self.config.prune_criterion == "taylor":
            scores = accumulate_taylor_scores(model, self.taylor_batches(), self.loss_fn())
        small = prune_network(model, self.config.prune, self.config.prune_criterion, scores)
        small = self.finetune(small, self.config.finetune_epochs)
        self.pruned_network = small.config
        save_weights(small, self.staging / "pruned.pt")
        variant = VariantResult(
            "pruned_torch_fp32",
            "torch",
            "fp32",
            "pruned.pt",
            count_parameters(small),
            self.flops(small),
            (self.staging / "pruned.pt").stat().st_size,
            notes=f"{self.config.prune:.2f} of channels pruned by {self.config.prune_criterion}, "
            f"{self.config.finetune_epochs} fine-tuning epochs; features {list(small.config.features)}",
        )
        self.measure(variant, TorchPredictor(small, "cpu", "fp32"))
        return small

    def taylor_batches(self) -> list[tuple[torch.Tensor, ...]]:
        batches = []
        for start in range(0, len(self.calibration), 2):
            sl = slice(start, start + 2)
            image = torch.from_numpy(self.calibration[sl])
            labels, subtypes = self.calibration_labels
            batches.append((image, torch.from_numpy(labels[sl]), torch.from_numpy(subtypes[sl])))
        return batches

    def loss_fn(self) -> Any:
        from edgepanc.training.losses import LossWeights, multitask_loss

        # The loss the model was trained with (Taylor importance is its first-order change).
        lesion_dice = self.bundle.provenance.get("training", {}).get("lesion_dice", "batch")

        def loss(
            outputs: tuple[torch.Tensor, torch.Tensor], label: torch.Tensor, subtype: torch.Tensor
        ) -> torch.Tensor:
            weights = LossWeights()
            return multitask_loss(outputs[0], outputs[1], label, subtype, weights, lesion_dice)[0]

        return loss

    def tensorrt(self, fp32_onnx: Path, model: torch.nn.Module, method: str) -> None:
        from edgepanc.quantization.tensorrt import tensorrt_skip_reason

        reason = tensorrt_skip_reason()
        if reason is not None:
            self.notes.append(f"skipped TensorRT: {reason}")
            log.info("skipped TensorRT: %s", reason)
            return
        from edgepanc.backends.tensorrt_backend import TensorRTPredictor
        from edgepanc.quantization.ptq import quantize_int8
        from edgepanc.quantization.tensorrt import build_engine

        build_engine(fp32_onnx, self.staging / "model_fp16.engine", self.patch_size, "fp16")
        symmetric = self.staging.parent / f".{self.staging.name}-sym.onnx"
        try:
            quantize_int8(
                fp32_onnx, symmetric, self.calibration, method, "qint8", symmetric_activations=True
            )
            build_engine(symmetric, self.staging / "model_int8.engine", self.patch_size, "int8")
        finally:
            symmetric.unlink(missing_ok=True)
        for precision in ("fp16", "int8"):
            file = f"model_{precision}.engine"
            variant = VariantResult(
                f"tensorrt_{precision}",
                "tensorrt",
                precision,
                file,
                count_parameters(model),
                self.flops(model),
                (self.staging / file).stat().st_size,
            )
            self.measure(variant, TensorRTPredictor(self.staging / file, precision=precision))

    def execute(self) -> ModelBundle:
        config = self.config
        torch.manual_seed(config.seed)
        self.prepare_data()
        methods = (
            ("minmax", "entropy", "percentile")
            if config.calibration_method == "auto"
            else (config.calibration_method,)
        )
        model = self.reference()
        method = methods[0]
        if "onnx" in config.export or "int8" in config.export or "tensorrt" in config.export:
            deployable, fp32_onnx = self.export_fp32(model, "model_fp32.onnx")
            self.onnx_variant("onnx_fp32", "model_fp32.onnx", deployable, "fp32")
            exclude: list[str] = []
            if config.wants_ptq or config.wants_qat:
                exclude = self.choose_activation_type(fp32_onnx)
            if config.wants_ptq:
                method = self.int8_ptq(fp32_onnx, deployable, "onnx", methods, exclude)
            if config.wants_qat:
                self.qat(model, method, exclude)
            if "tensorrt" in config.export:
                self.tensorrt(fp32_onnx, deployable, method)
        if config.prune is not None:
            small = self.pruned(model)
            if "onnx" in config.export or "int8" in config.export:
                small_deployable, small_onnx = self.export_fp32(small, "pruned_fp32.onnx")
                self.onnx_variant("pruned_onnx_fp32", "pruned_fp32.onnx", small_deployable, "fp32")
                if "int8" in config.export and config.int8 != "none":
                    self.int8_ptq(
                        small_onnx,
                        small_deployable,
                        "pruned_onnx",
                        (method,),
                        self.int8_exclusions(small_onnx),
                    )
        return self.write_bundle()

    def write_bundle(self) -> ModelBundle:
        config = self.config
        self.time_variants()
        reference = next(v for v in self.variants if v.name == REFERENCE)
        for variant in self.variants:
            variant.within_tolerance = config.tolerance.accepts(reference.metrics, variant.metrics)
        default = choose_default(self.variants, REFERENCE, config.tolerance.accepts)
        self.notes += target_notes(self.variants, reference)
        self.notes += qat_note(self.variants)
        bundle = copy.deepcopy(self.bundle)
        bundle.path = self.staging
        bundle.kind = "quantized"
        bundle.artifacts = {v.name: _artifact_record(v, self) for v in self.variants}
        bundle.default_artifact = default.name
        if bundle.activation_bytes_per_voxel is None:  # a source bundle older than the field
            bundle.activation_bytes_per_voxel = network_activation_bytes_per_voxel(
                bundle.network, self.patch_size
            )
        bundle.metrics = {
            **self.bundle.metrics,
            "quantization": {v.name: v.metrics for v in self.variants},
        }
        bundle.provenance = provenance(
            source_bundle=str(config.model.resolve()),
            source_provenance=self.bundle.provenance,
            quantize=config.to_dict(),
        )
        write_report(
            self.staging,
            self.variants,
            REFERENCE,
            default.name,
            {
                "patch_size": list(self.patch_size),
                "config": config.to_dict(),
                "trials": self.trials,
                "activation_type": getattr(self, "activation_type", None),
                "notes": self.notes,
            },
        )
        save_bundle_metadata(bundle)
        return bundle


def _artifact_record(variant: VariantResult, run: QuantizeRun) -> dict[str, Any]:
    record: dict[str, Any] = {
        "backend": variant.backend,
        "precision": variant.precision,
        "device": "cuda" if variant.backend == "tensorrt" else "cpu",
        "latency_ms": variant.latency_ms,
        "metrics": {k: variant.metrics[k] for k in ("whole_dsc", "lesion_dsc", "macro_f1")},
        "parameters": variant.parameters,
        "flops": variant.flops,
        "size_bytes": variant.size_bytes,
    }
    if variant.file:
        record["file"] = variant.file
    if variant.name.startswith("pruned"):
        record["network"] = run.pruned_network.to_dict()
    return record


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda asked for, but torch sees no CUDA device")
    return device


def run_quantize(config: QuantizeConfig) -> ModelBundle:
    """Build the quantized bundle at ``config.out``; nothing is left there if anything fails."""
    inputs = check_inputs(config)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{config.out.name}.", suffix=".staging", dir=config.out.parent)
    )
    try:
        run = QuantizeRun(config, inputs, staging)
        bundle = run.execute()
        if config.out.exists():
            config.out.rmdir()  # checked empty above; rename cannot replace a folder otherwise
        # mkdtemp made the staging folder private; the bundle gets the usual folder permissions.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        os.replace(staging, config.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    bundle.path = config.out
    return bundle
