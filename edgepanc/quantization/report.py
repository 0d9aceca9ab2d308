"""The compression report in the bundle: quantization.json, quantization.md and quantization.png."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepanc.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from edgepanc.quantization.config import SUBTYPES_BY_CASE, AccuracyTolerance

REPORT_JSON = "quantization.json"
REPORT_MD = "quantization.md"
REPORT_PNG = "quantization.png"


@dataclass
class VariantResult:
    """One measured variant: what it is, how big, how fast, how accurate."""

    name: str
    backend: str
    precision: str
    file: str | None  # inside the bundle; None: the bundle's own weights.pt
    parameters: int
    flops: int  # per patch, forward pass
    size_bytes: int
    latency_ms: float | None = None  # median per patch on this machine
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics
    within_tolerance: bool | None = None
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantResult:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# The compression targets: (label, variant name prefix, speed-up over fp32 PyTorch per patch).
SPEEDUP_TARGETS = (("best INT8", "onnx_int8", 1.8), ("pruned + INT8", "pruned_onnx_int8", 3.0))


def target_variant(variants: Sequence[VariantResult], prefix: str) -> VariantResult | None:
    """The variant a speed-up target is judged on: the fastest timed one named ``prefix*``
    within the accuracy tolerance, else the fastest timed one (None when there is none)."""
    timed = [v for v in variants if v.name.startswith(prefix) and v.latency_ms]
    pool = [v for v in timed if v.within_tolerance] or timed
    return min(pool, key=lambda v: v.latency_ms) if pool else None


def choose_default(
    variants: Sequence[VariantResult], reference: str, accepts: Any
) -> VariantResult:
    """The fastest variant whose accuracy ``accepts(reference_metrics, metrics)``; else the reference."""
    by_name = {v.name: v for v in variants}
    base = by_name[reference]
    eligible = [
        v
        for v in variants
        if v.latency_ms is not None and v.metrics and accepts(base.metrics, v.metrics)
    ]
    return min(eligible, key=lambda v: v.latency_ms) if eligible else base


def target_notes(variants: Sequence[VariantResult], reference: VariantResult) -> list[str]:
    """One line per compression target: met or not, with the numbers."""
    notes = []
    for label, prefix, target in SPEEDUP_TARGETS:
        chosen = target_variant(variants, prefix)
        if chosen is None or not reference.latency_ms:
            notes.append(f"{label}: no variant measured")
            continue
        speedup = reference.latency_ms / chosen.latency_ms
        if not chosen.within_tolerance:
            notes.append(f"{label}: no variant within the accuracy tolerance")
            notes.append(
                f"{label} candidate {chosen.name}: {speedup:.2f}x faster than fp32 "
                f"PyTorch (target {target}x); {metric_deltas(chosen, reference)}"
            )
            continue
        verdict = "meets" if speedup >= target else "misses"
        notes.append(
            f"{label}: {chosen.name} is {speedup:.2f}x faster than fp32 PyTorch ({verdict} the {target}x target)"
        )
    return notes


def subtype_flip_notes(
    variants: Sequence[VariantResult], reference: VariantResult, macro_f1_limit: float
) -> list[str]:
    """One line per variant within the tolerance although its macro F1 fell by more than
    ``macro_f1_limit``: it names another subtype than fp32 on too few cases to count
    (:class:`~edgepanc.quantization.config.AccuracyTolerance`)."""
    notes = []
    cases = len(reference.metrics.get(SUBTYPES_BY_CASE) or {})
    for variant in variants:
        loss = reference.metrics["macro_f1"] - variant.metrics.get("macro_f1", 0.0)
        if variant.within_tolerance and loss > macro_f1_limit + 1e-9:
            changed = AccuracyTolerance.changed_subtypes(reference.metrics, variant.metrics)
            notes.append(
                f"{variant.name}: macro F1 {-loss:+.4f} against fp32 from {changed} of {cases} "
                "cases named another subtype: within the tolerance"
            )
    return notes


def metric_deltas(variant: VariantResult, reference: VariantResult) -> str:
    """``whole DSC -0.0123, lesion DSC +0.0040, macro F1 -0.0980`` against ``reference``."""
    names = {"whole_dsc": "whole DSC", "lesion_dsc": "lesion DSC", "macro_f1": "macro F1"}
    return ", ".join(
        f"{label} {variant.metrics[key] - reference.metrics[key]:+.4f}"
        for key, label in names.items()
    )


def qat_note(variants: Sequence[VariantResult]) -> list[str]:
    """Whether quantization-aware training beat post-training quantization, metric by metric."""
    qat = next((v for v in variants if v.name == "onnx_int8_qat"), None)
    ptq = [v for v in variants if v.name.startswith("onnx_int8_") and v.name != "onnx_int8_qat"]
    if qat is None or not ptq:
        return []
    best_ptq = max(ptq, key=lambda v: v.metrics["whole_dsc"])
    names = {"whole_dsc": "whole DSC", "lesion_dsc": "lesion DSC", "macro_f1": "macro F1"}
    better = [label for key, label in names.items() if qat.metrics[key] > best_ptq.metrics[key]]
    worse = [label for key, label in names.items() if qat.metrics[key] < best_ptq.metrics[key]]
    verdict = (
        "QAT beat PTQ on every metric"
        if not worse
        else "QAT did not beat PTQ on any metric"
        if not better
        else f"QAT beat PTQ on {', '.join(better)}, not on {', '.join(worse)}"
    )
    figures = "; ".join(
        f"{label} {qat.metrics[key]:.4f} vs {best_ptq.metrics[key]:.4f}"
        for key, label in names.items()
    )
    return [f"QAT against PTQ ({best_ptq.name}): {verdict} ({figures})"]


def markdown_table(variants: Sequence[VariantResult], reference: str, default: str) -> str:
    """A Markdown table of every variant; speed-up is against ``reference`` (fp32 PyTorch)."""
    base = next(v for v in variants if v.name == reference)
    header = (
        "| variant | backend | precision | parameters | GFLOPs/patch | file MB | latency ms/patch "
        "| speed-up | whole DSC | lesion DSC | macro F1 | within tolerance |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    rows = []
    for v in variants:
        speedup = (
            f"{base.latency_ms / v.latency_ms:.2f}x" if v.latency_ms and base.latency_ms else "-"
        )
        marker = " (default)" if v.name == default else ""
        rows.append(
            f"| {v.name}{marker} | {v.backend} | {v.precision} | {v.parameters:,} | "
            f"{v.flops / 1e9:.2f} | {v.size_bytes / 1e6:.2f} | "
            f"{'-' if v.latency_ms is None else f'{v.latency_ms:.1f}'} | {speedup} | "
            f"{_metric(v, 'whole_dsc')} | {_metric(v, 'lesion_dsc')} | {_metric(v, 'macro_f1')} | "
            f"{'-' if v.within_tolerance is None else ('yes' if v.within_tolerance else 'no')} |"
        )
    return header + "\n".join(rows) + "\n"


def _metric(variant: VariantResult, key: str) -> str:
    return f"{variant.metrics[key]:.4f}" if key in variant.metrics else "-"


def plot_report(variants: Sequence[VariantResult], path: Path) -> Path:
    """Bar chart: latency per patch (left) and the three key metrics (right) per variant."""
    # matplotlib only when a chart is drawn: reading a report (bench/) does not load it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v.name for v in variants]
    x = np.arange(len(names))
    fig, (ax_time, ax_acc) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names)), 4.5))
    ax_time.bar(x, [v.latency_ms or 0.0 for v in variants], color="tab:blue")
    ax_time.set_ylabel("ms per patch (median)")
    ax_time.set_title("latency")
    width = 0.27
    for i, (key, label) in enumerate(
        (("whole_dsc", "whole DSC"), ("lesion_dsc", "lesion DSC"), ("macro_f1", "macro F1"))
    ):
        ax_acc.bar(
            x + (i - 1) * width, [v.metrics.get(key, 0.0) for v in variants], width, label=label
        )
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("validation accuracy")
    ax_acc.legend(loc="lower right", fontsize=8)
    for ax in (ax_time, ax_acc):
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def placement_tables(placement: dict[str, Any]) -> str:
    """Markdown: per fp32 graph, each layer's measured fp32 and INT8 kernel time and its choice."""
    if not placement:
        return ""
    parts = ["\n## INT8 layer placement (kernel time per patch, measured here)\n"]
    for graph, entry in placement.items():
        rows = [
            f"| `{layer['name']}` | {layer['fp32_ms']:.2f} | "
            + ("-" if layer["int8_ms"] is None else f"{layer['int8_ms']:.2f}")
            + f" | {layer.get('conversion_ms', 0.0):.2f} | {'INT8' if layer['int8'] else 'fp32'} |"
            for layer in entry["layers"]
        ]
        parts.append(
            f"\n`{graph}`: {entry['summary']}\n\n| layer | fp32 ms | INT8 ms | conversions ms | runs in |\n"
            "|---|---:|---:|---:|---|\n" + "\n".join(rows) + "\n"
        )
    return "".join(parts)


def write_report(
    folder: Path,
    variants: Sequence[VariantResult],
    reference: str,
    default: str,
    extra: dict[str, Any],
) -> dict[str, Path]:
    """Write the three report files into the bundle ``folder``; return their paths."""
    folder = Path(folder)
    data = {
        "reference": reference,
        "default_artifact": default,
        "variants": [v.to_dict() for v in variants],
        **extra,
    }
    write_json_atomic(folder / REPORT_JSON, data)
    notes = "".join(f"- {line}\n" for line in extra.get("notes", []))
    write_text_atomic(
        folder / REPORT_MD,
        "# Compression report\n\n"
        f"Latency: median per patch {tuple(extra.get('patch_size', ()))} on this machine; "
        f"speed-up against `{reference}`. Default artifact: `{default}` (the fastest variant "
        "within the accuracy tolerance).\n\n"
        + markdown_table(variants, reference, default)
        + ("\n## Notes\n\n" + notes if notes else "")
        + placement_tables(extra.get("trials", {}).get("int8_layers", {})),
    )
    plot_report(variants, folder / REPORT_PNG)
    return {name: folder / name for name in (REPORT_JSON, REPORT_MD, REPORT_PNG)}
