"""Assembly: every kept variant timed, the default chosen, the report and ``model.json`` written.

The default artifact is the fastest variant within the accuracy tolerance of the reference
(fp32 PyTorch). Each variant's ``model.json`` record is its typed record
(:meth:`~edgepanc.quantization.variants.Variant.to_record`) plus what was measured.
"""

from __future__ import annotations

import copy
from typing import Any

from edgepanc.bundle import ModelBundle, provenance, save_bundle_metadata
from edgepanc.networks.activation import network_activation_bytes_per_voxel
from edgepanc.networks.config import UNetConfig
from edgepanc.quantization.evaluate_variants import KEY_METRICS
from edgepanc.quantization.report import (
    VariantResult,
    choose_default,
    qat_note,
    subtype_flip_notes,
    target_notes,
    write_report,
)
from edgepanc.quantization.stages.context import QuantizeContext
from edgepanc.quantization.stages.measure import time_variants
from edgepanc.quantization.variants import REFERENCE, Variant


def assemble(
    ctx: QuantizeContext, activation_type: str | None, pruned_network: UNetConfig | None
) -> ModelBundle:
    """Write the report and ``model.json`` into the staging folder; return the new bundle.

    ``activation_type``: the INT8 activations chosen (None without INT8); ``pruned_network``:
    the architecture every pruned variant runs (None without pruning).
    """
    config = ctx.config
    time_variants(ctx)
    results = ctx.results
    reference = next(m.result for m in ctx.measured if m.variant == REFERENCE)
    for result in results:
        result.within_tolerance = config.tolerance.accepts(reference.metrics, result.metrics)
    default = choose_default(results, REFERENCE.name, config.tolerance.accepts)
    ctx.notes += subtype_flip_notes(results, reference, config.tolerance.macro_f1)
    ctx.notes += target_notes(results, reference)
    ctx.notes += qat_note(results)
    bundle = _quantized_bundle(ctx)
    bundle.artifacts = {
        m.variant.name: artifact_record(m.variant, m.result, pruned_network) for m in ctx.measured
    }
    bundle.default_artifact = default.name
    bundle.metrics = {
        **ctx.source.metrics,
        "quantization": {result.name: result.metrics for result in results},
    }
    write_report(
        ctx.staging,
        results,
        REFERENCE.name,
        default.name,
        {
            "patch_size": list(ctx.patch_size),
            "config": config.to_dict(),
            "trials": ctx.trials,
            "activation_type": activation_type,
            "notes": ctx.notes,
        },
    )
    save_bundle_metadata(bundle)
    return bundle


def artifact_record(
    variant: Variant, result: VariantResult, pruned_network: UNetConfig | None = None
) -> dict[str, Any]:
    """The ``model.json`` record of one variant: what it is, where it runs, what was measured."""
    record: dict[str, Any] = {
        **variant.to_record(),
        "device": variant.device,
        "latency_ms": result.latency_ms,
        "metrics": {key: result.metrics[key] for key in KEY_METRICS},
        # the runtime never runs a variant recorded False here unless told to on purpose
        "within_tolerance": result.within_tolerance,
        "parameters": result.parameters,
        "flops": result.flops,
        "size_bytes": result.size_bytes,
    }
    if variant.pruned:
        if pruned_network is None:
            raise ValueError(f"{variant.name} is pruned, but no pruned network was given")
        record["network"] = pruned_network.to_dict()  # the backends rebuild it from this
    return record


def _quantized_bundle(ctx: QuantizeContext) -> ModelBundle:
    """The source bundle's description, re-rooted in the staging folder as a quantized bundle."""
    bundle = copy.deepcopy(ctx.source)
    bundle.path = ctx.staging
    bundle.kind = "quantized"
    if bundle.activation_bytes_per_voxel is None:  # a source bundle older than the field
        bundle.activation_bytes_per_voxel = network_activation_bytes_per_voxel(
            bundle.network, ctx.patch_size
        )
    bundle.provenance = provenance(
        source_bundle=str(ctx.config.model.resolve()),
        source_provenance=ctx.source.provenance,
        quantize=ctx.config.to_dict(),
    )
    return bundle
