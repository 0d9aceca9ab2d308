"""What a run writes besides the masks: the case JSON, ``subtype_results.csv``, the summary."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepanc.io.atomic import write_json_atomic, write_text_atomic
from edgepanc.memory import format_size

SUBTYPE_CSV = "subtype_results.csv"
STAGES = ("read", "preprocess", "coarse", "fine", "postprocess", "restore", "write")


@dataclass
class CaseReport:
    """Everything the case JSON records; ``to_dict`` is the JSON."""

    name: str  # mask file name, e.g. quiz_037.nii.gz (the CSV's ``Names``)
    input: str
    mask: str
    subtype: int | None  # None: the model has no trained subtype head
    probabilities: list[float]
    pancreas_volume_ml: float  # labels 1 + 2: the lesion lies in the pancreas
    lesion_volume_ml: float
    timings_s: dict[str, float]
    peak_memory_bytes: int  # peak RSS of the process up to the end of this case
    backend: str
    precision: str
    artifact: str | None
    device: str
    tile_batch: int
    tile_count: int
    roi: dict[str, Any]
    throttle_events: list[dict[str, Any]] = field(default_factory=list)
    memory_plan: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaseFailure:
    """A case that failed: its input and the one-line reason."""

    input: str
    message: str


def case_json_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{case_stem(name)}.json"


def case_stem(mask_name: str) -> str:
    """``quiz_037.nii.gz`` -> ``quiz_037``."""
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if mask_name.endswith(suffix):
            return mask_name[: -len(suffix)]
    return mask_name


def write_case_json(out_dir: Path, report: CaseReport) -> Path:
    path = case_json_path(out_dir, report.name)
    write_json_atomic(path, report.to_dict())
    return path


def subtype_csv_text(rows: Sequence[tuple[str, int | None]]) -> str:
    """``Names,Subtype`` rows, the data set's submission format.

    A case without a subtype (a model trained without subtype labels) gets no row: a grader then
    counts it as not predicted instead of scoring a guess, and an empty cell breaks readers.

    Example: ``subtype_csv_text([("a.nii.gz", 1), ("b.nii.gz", None)])`` ->
    ``"Names,Subtype\na.nii.gz,1\n"``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["Names", "Subtype"])
    writer.writerows(row for row in rows if row[1] is not None)
    return buffer.getvalue()


def write_subtype_csv(out_dir: Path, reports: Sequence[CaseReport]) -> Path:
    """Write ``subtype_results.csv`` for the cases that succeeded, sorted by name."""
    path = out_dir / SUBTYPE_CSV
    rows = sorted((r.name, r.subtype) for r in reports)
    write_text_atomic(path, subtype_csv_text(rows))
    return path


def summary_table(reports: Sequence[CaseReport], failures: Sequence[CaseFailure]) -> str:
    """The end-of-run table: cases, failures, seconds per case, peak memory; then failures."""
    total_s = [sum(r.timings_s.values()) for r in reports]
    peak = max((r.peak_memory_bytes for r in reports), default=0)
    rows = [
        ("cases", str(len(reports) + len(failures))),
        ("succeeded", str(len(reports))),
        ("failed", str(len(failures))),
        ("seconds per case", f"{sum(total_s) / len(total_s):.2f}" if total_s else "-"),
        ("peak memory", format_size(peak) if reports else "-"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    if failures:
        lines.append("failures:")
        lines.extend(f"  {f.message}" for f in failures)
    return "\n".join(lines)
