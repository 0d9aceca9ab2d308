"""Benchmark results: collected by the bench tests, rendered into RESULTS.md and results.png.

The bench tests call :func:`record` with one measurement at a time; when the environment
variable ``EDGEPANC_BENCH_RESULTS`` names a JSON file, the session's records are written there
at the end (``bench/conftest.py``). ``scripts/bench_results.py`` sets it, runs the suites and
renders the file with :func:`render_markdown` and :func:`render_chart`. Without the variable
(CI's gate run) nothing is written into the source tree.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_ENV = "EDGEPANC_BENCH_RESULTS"
LIBRARIES = ("edgepanc", "torch", "numpy", "onnxruntime", "SimpleITK", "scipy", "nnunetv2", "monai")


@dataclass(frozen=True)
class Spread:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values to summarise")
        return cls(
            float(statistics.median(values)), float(min(values)), float(max(values)), len(values)
        )


@dataclass
class Recorder:
    """Measurements of one bench session, grouped by section (patch, end_to_end, gates, ...)."""

    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Where to keep the results; rewritten (atomically) after every record, so that a session
    # stopped part-way keeps what it measured.
    path: Path | None = None

    def record(self, section: str, **values: Any) -> None:
        self.sections.setdefault(section, []).append(_plain(values))
        if self.path is not None:
            self.save(self.path)

    def save(self, path: Path) -> None:
        from edgepanc.io.atomic import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"machine": machine_description(), "sections": self.sections}


def _plain(value: Any) -> Any:
    """Dataclasses, numpy scalars and paths as JSON-ready values."""
    if hasattr(value, "__dataclass_fields__"):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def results_path() -> Path | None:
    """Where the session's records go, or None (the default: record nothing to disk)."""
    value = os.environ.get(RESULTS_ENV)
    return Path(value) if value else None


# --- machine description -----------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags_of_interest() -> list[str]:
    """The SIMD features that decide INT8/bf16 speed (AVX2, AVX-512 VNNI/BF16, AMX)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_description() -> dict[str, Any]:
    """CPU, cores, memory and library versions: what every figure here depends on."""
    import psutil

    from edgepanc.memory import total_memory

    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags_of_interest(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": total_memory(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(),
    }


# --- rendering -----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _s(seconds: float) -> str:
    return f"{seconds:.2f}"


def _mb(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 1e6:.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _spread_cells(spread: dict[str, Any], fmt=_s) -> list[str]:
    return [fmt(spread["median"]), f"{fmt(spread['low'])}-{fmt(spread['high'])}", str(spread["n"])]


def _reference_pair(record: dict[str, Any], keys: tuple[str, str] = ("on", "off")) -> str:
    """Two masks' whole-pancreas DSC against the phantom's own label, ``a / b`` (newer records
    only; ``-`` for older ones)."""
    reference = record.get("reference_whole_dsc")
    if not reference:
        return "-"
    return f"{reference[keys[0]]:.4f} / {reference[keys[1]]:.4f}"


def render_markdown(results: dict[str, Any]) -> str:
    """RESULTS.md from a results JSON (see :class:`Recorder`)."""
    machine = results.get("machine", {})
    sections = results.get("sections", {})
    out = ["# edgepanc benchmark results", ""]
    out += [
        "Generated by `python scripts/bench_results.py`; do not edit by hand. "
        "How each figure is measured: `bench/README.md`.",
        "",
    ]
    out += ["## Machine", ""]
    libs = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    out += [
        f"- CPU: {machine.get('cpu', '?')} ({', '.join(machine.get('cpu_flags', [])) or 'no AVX-512/AMX'})",
        f"- cores: {machine.get('physical_cores')} physical, {machine.get('logical_cores')} logical, "
        f"{machine.get('usable_cores')} usable by this process",
        f"- memory: {_mb(machine.get('memory_bytes'))} MB",
        f"- Python {machine.get('python')} on {machine.get('platform')}",
        f"- libraries: {libs}",
        "",
    ]
    bundle = sections.get("bundle")
    if bundle:
        b = bundle[-1]
        out += [
            "## Model under test",
            "",
            f"- {b.get('description')}",
            f"- network: {b.get('network')}; patch {b.get('patch_size')}, target spacing "
            f"{b.get('target_spacing')} mm",
            "",
        ]
    if sections.get("patch"):
        out += ["## Per-patch latency", "", "One tile (batch 1) through each backend; ms.", ""]
        rows = [
            [
                r["backend"],
                r["precision"],
                *_spread_cells(r["seconds"], _ms),
                f"{r.get('gflops', 0):.1f}",
            ]
            for r in sections["patch"]
        ]
        out += _table(
            ["backend", "precision", "median ms", "min-max ms", "rounds", "GFLOP/s"], rows
        )
        out.append("")
    if sections.get("compression"):
        c = sections["compression"][-1]
        out += [
            "## Compression speed-ups",
            "",
            f"Variants of the quantized bundle timed in turns in one process ({c['rounds']} "
            "turns, a settling call before each timed one); speed-up against fp32 PyTorch. "
            f"Best INT8: `{c['best_int8']}`; pruned + INT8: `{c.get('pruned_int8') or 'none'}`.",
            "",
        ]
        rows = [
            [
                name,
                f"{lat['median_ms']:.1f}",
                f"{lat['min_ms']:.1f}-{lat['max_ms']:.1f}",
                f"{c['speedup'][name]:.2f}x",
            ]
            for name, lat in c["latency_ms"].items()
        ]
        out += _table(["variant", "median ms", "min-max ms", "speed-up"], rows)
        out.append("")
    if sections.get("end_to_end"):
        out += [
            "## End to end",
            "",
            "Wall time of one whole process (start-up, model load, read, "
            "preprocess, inference, restore, write) and its peak resident memory measured "
            "from outside (PeakMemoryMonitor).",
            "",
        ]
        rows = [
            [
                r["case"],
                r["path"],
                r["shape"],
                *_spread_cells(r["seconds"]),
                _mb(r.get("peak_rss_bytes")),
            ]
            for r in sections["end_to_end"]
        ]
        out += _table(
            ["case", "path", "shape (z,y,x)", "median s", "min-max s", "runs", "peak RSS MB"], rows
        )
        out.append("")
    if sections.get("release_end_to_end"):
        out += [
            "## Against the runtime when OpenVINO came",
            "",
            "`edgepanc run` against the same command of the commit issue 26 was filed at "
            "(its default then: ONNX Runtime INT8, no preview), alternating, same interpreter "
            "and packages; agreement is Dice between the two masks.",
            "",
        ]
        rows = [
            [
                r["case"],
                f"{r['now']} / {r['then']}",
                f"{r['seconds']['now']['median']:.2f} / {r['seconds']['then']['median']:.2f}",
                f"{r['speedup']:.2f}x",
                f"{r['whole_dsc']:.4f}",
                f"{_mb(r['peak_rss_bytes']['now'])} / {_mb(r['peak_rss_bytes']['then'])}",
            ]
            for r in sections["release_end_to_end"]
        ]
        out += _table(
            [
                "case",
                "runs now / then",
                "median s now / then",
                "speed-up",
                "whole DSC between masks",
                "peak RSS MB now / then",
            ],
            rows,
        )
        out.append("")
    if sections.get("backend_end_to_end"):
        out += [
            "## Backend choice, end to end",
            "",
            "`edgepanc run` (auto: the variant that timed fastest on this CPU) against "
            "`edgepanc run --backend onnxruntime` (the bundle's ONNX Runtime default), "
            "alternating; agreement is Dice between the two masks.",
            "",
        ]
        rows = [
            [
                r["case"],
                r["auto"],
                r["onnxruntime"],
                f"{r['speedup']:.2f}x",
                f"{r['whole_dsc']:.4f}",
                f"{r['lesion_dsc']:.4f}",
                f"{_mb(r['peak_rss_bytes']['auto'])} / {_mb(r['peak_rss_bytes']['onnxruntime'])}",
            ]
            for r in sections["backend_end_to_end"]
        ]
        out += _table(
            [
                "case",
                "auto picks",
                "ONNX Runtime runs",
                "speed-up",
                "whole DSC between masks",
                "lesion DSC between masks",
                "peak RSS MB, auto / ORT",
            ],
            rows,
        )
        out.append("")
    if sections.get("gates"):
        out += [
            "## Gates",
            "",
            "Baseline and optimised runs alternate in one session; the ratio is of medians.",
            "",
        ]
        rows = [
            [r["gate"], "PASS" if r["passed"] else "FAIL", r["figure"], r.get("requirement", "-")]
            for r in sections["gates"]
        ]
        out += _table(["gate", "result", "measured", "required"], rows)
        out.append("")
    if sections.get("stages"):
        out += [
            "## Where the time goes",
            "",
            "Per-stage seconds from the case JSON of one run.",
            "",
        ]
        stage_names = sorted({k for r in sections["stages"] for k in r["timings_s"]})
        rows = [
            [
                r["case"],
                r["path"],
                *(f"{r['timings_s'].get(k, 0):.2f}" for k in stage_names),
                r.get("tiles", "-"),
            ]
            for r in sections["stages"]
        ]
        out += _table(["case", "path", *stage_names, "tiles"], rows)
        out.append("")
    if sections.get("conv"):
        out += [
            "## Physical limit",
            "",
            "Sustained throughput of the network's main operation "
            "(3x3x3 convolution, 32 -> 32 channels on 64^3, batch 1).",
            "",
        ]
        rows = [
            [r["backend"], r["precision"], *_spread_cells(r["seconds"], _ms), f"{r['gflops']:.1f}"]
            for r in sections["conv"]
        ]
        out += _table(
            ["backend", "precision", "median ms", "min-max ms", "rounds", "GFLOP/s"], rows
        )
        out.append("")
    if sections.get("utilisation"):
        out += ["### Share of the limit reached by the runtime", ""]
        rows = [
            [
                r["case"],
                r["backend"],
                r["tiles"],
                f"{r['network_gflop']:.1f}",
                _s(r["network_s"]),
                _s(r["pure_network_s"]),
                f"{r['achieved_gflops']:.1f}",
                f"{r['limit_gflops']:.1f}",
                f"{100 * r['share']:.0f}%",
                _s(r["outside_s"]),
            ]
            for r in sections["utilisation"]
        ]
        out += _table(
            [
                "case",
                "backend",
                "tiles",
                "network GFLOP",
                "inference stages s",
                "pure network s",
                "GFLOP/s",
                "conv limit GFLOP/s",
                "share",
                "s outside inference",
            ],
            rows,
        )
        out += [
            "",
            "GFLOP/s = estimate_flops x tiles / seconds of the inference stages (coarse + "
            "fine, stitching included); pure network s = tiles x the per-tile latency of the "
            "same predictor; s outside inference = process wall time minus the inference "
            "stages (start-up, model load, read, resampling, post-processing, restore, "
            "write).",
            "",
        ]
    if sections.get("coarse_to_fine"):
        out += [
            "## Coarse-to-fine",
            "",
            "`edgepanc run --roi on` against `--roi off` (the whole volume tiled at the same "
            "step, same backend), alternating; agreement is Dice between the two masks. Tiling: "
            "the coarse + fine stages against the whole-volume pass; process: the whole run. "
            "The last column scores each mask against the phantom's reference label: where the "
            "two disagree, it says which one is right.",
            "",
        ]
        rows = [
            [
                r["case"],
                _s(r["tiling_on"]["median"]),
                _s(r["tiling_off"]["median"]),
                f"{r['tiling_speedup']:.2f}x",
                _s(r["roi_on"]["median"]),
                _s(r["roi_off"]["median"]),
                f"{r['speedup']:.2f}x",
                "-" if r.get("box_fraction") is None else f"{100 * r['box_fraction']:.1f}%",
                f"{r['tiles_on']} / {r['tiles_off']}",
                f"{r['whole_dsc']:.4f}",
                f"{r['lesion_dsc']:.4f}",
                _reference_pair(r),
            ]
            for r in sections["coarse_to_fine"]
        ]
        out += _table(
            [
                "case",
                "tiling s, ROI",
                "tiling s, full",
                "tiling speed-up",
                "process s, ROI",
                "process s, full",
                "process speed-up",
                "box share",
                "tiles ROI / full",
                "whole DSC",
                "lesion DSC",
                "whole DSC vs reference, ROI / full",
            ],
            rows,
        )
        out.append("")
    if sections.get("peers"):
        out += [
            "## Peers",
            "",
            "The same network and pre/post-processing; only the sliding-window "
            "inference differs. Agreement is Dice against edgepanc's own mask; the last column "
            "scores the peer's mask and ours against the phantom's reference label.",
            "",
        ]
        ours = {
            r["case"]: r
            for r in sections.get("end_to_end", [])
            if r.get("path") == "edgepanc run (suite)"
        }

        def versus(r: dict[str, Any]) -> list[str]:
            mine = ours.get(r["case"])
            if mine is None:
                return ["-", "-"]
            ratio = r["seconds"]["median"] / mine["seconds"]["median"]
            theirs_mb, mine_mb = r.get("peak_rss_bytes"), mine.get("peak_rss_bytes")
            share = f"{mine_mb / theirs_mb:.2f}" if theirs_mb and mine_mb else "-"
            return [f"{ratio:.2f}x", share]

        rows = [
            [
                r["peer"],
                r["case"],
                *_spread_cells(r["seconds"]),
                *versus(r),
                _mb(r.get("peak_rss_bytes")),
                f"{r['whole_dsc']:.3f}",
                f"{r['lesion_dsc']:.3f}",
                _reference_pair(r, ("peer", "ours")),
            ]
            for r in sections["peers"]
        ]
        out += _table(
            [
                "peer",
                "case",
                "median s",
                "min-max s",
                "runs",
                "edgepanc faster by",
                "edgepanc memory / peer's",
                "peak RSS MB",
                "whole DSC vs ours",
                "lesion DSC vs ours",
                "whole DSC vs reference, peer / ours",
            ],
            rows,
        )
        out.append("")
    for note in sections.get("notes", []):
        out.append(f"- {note['text']}")
    return "\n".join(out).rstrip() + "\n"


def render_chart(results: dict[str, Any], path: Path) -> None:
    """results.png: end-to-end medians (with range) per case and path, and per-patch latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgepanc.io.atomic import atomic_path

    sections = results.get("sections", {})
    e2e = sections.get("end_to_end", []) + [
        {**p, "path": p["peer"]} for p in sections.get("peers", [])
    ]
    patch = sections.get("patch", [])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    # sorted by case, so that each phantom's paths stand side by side
    e2e = sorted(e2e, key=lambda r: (r["case"] != "quiz", r["seconds"]["median"]))
    _bars(axes[0], [f"{r['case']}: {r['path']}" for r in e2e], [r["seconds"] for r in e2e], "s")
    axes[0].set_title("End to end, one case (median, min-max)")
    _bars(
        axes[1],
        [f"{r['backend']}\n{r['precision']}" for r in patch],
        [{k: (v * 1000 if k != "n" else v) for k, v in r["seconds"].items()} for r in patch],
        "ms",
    )
    axes[1].set_title("Per-patch latency (median, min-max)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _bars(ax: Any, labels: list[str], spreads: list[dict[str, float]], unit: str) -> None:
    if not labels:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        return
    medians = [s["median"] for s in spreads]
    errors = [
        [m - s["low"] for m, s in zip(medians, spreads, strict=True)],
        [s["high"] - m for m, s in zip(medians, spreads, strict=True)],
    ]
    ax.bar(range(len(labels)), medians, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=35, ha="right")
    ax.set_ylabel(f"{unit} (log scale)")
    # the figures span three orders of magnitude (a 6 s run beside a 685 s peer)
    ax.set_yscale("log")
    for i, m in enumerate(medians):
        ax.annotate(
            f"{m:.2f}",
            (i, m),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
