"""What a run writes besides the masks: the case JSON, ``subtype_results.csv``, the summary.

The case JSON is also the run's record of its own work: ``format`` marks it as edgepanc's,
``status`` is ``"writing"`` while the mask goes into place and ``"finished"`` after, and the
digests of the input, the mask and the preview tie it to those files (see
:mod:`edgepanc.runtime.outputs`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepanc.io.atomic import write_json_atomic, write_text_atomic
from edgepanc.memory import format_size

SUBTYPE_CSV = "subtype_results.csv"
STAGES = ("read", "preprocess", "coarse", "fine", "postprocess", "restore", "write")
CASE_FORMAT = "edgepanc-case"
WRITING, FINISHED = "writing", "finished"
_MAX_RECORD_BYTES = 16 << 20  # a case JSON is a few kB; anything this large is someone else's


@dataclass
class CaseReport:
    """Everything the case JSON records; ``to_dict`` is the JSON.

    Example: ``CaseReport(name="ct.nii.gz", ...).to_dict()["status"]`` -> ``"finished"``.
    """

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
    format: str = CASE_FORMAT
    status: str = FINISHED
    model_id: str | None = None  # see edgepanc.runtime.model.model_identity
    input_sha256: str | None = None
    mask_sha256: str | None = None
    preview_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaseRecord:
    """What an existing case JSON that edgepanc wrote says about its case.

    Example: ``read_case_record(Path("out/ct.json")).status`` -> ``"finished"``.
    """

    name: str
    subtype: int | None  # None: the model has no trained subtype head
    status: str
    model_id: str | None
    input_sha256: str | None
    mask_sha256: str | None
    preview_sha256: str | None


def read_case_record(path: Path) -> CaseRecord | None:
    """The record in ``path`` if it is a case JSON edgepanc wrote (a plain file, not a link);
    None for anything else, including a missing file.

    Example: ``read_case_record(Path("out/notes.json"))`` -> ``None``.
    """
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_RECORD_BYTES:
            return None
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CASE_FORMAT:
        return None
    subtype = data.get("subtype")
    fields = ("status", "model_id", "input_sha256", "mask_sha256", "preview_sha256")
    text = {key: data.get(key) for key in fields}
    if not isinstance(data.get("name"), str) or not (subtype is None or type(subtype) is int):
        return None
    if not all(value is None or isinstance(value, str) for value in text.values()):
        return None
    return CaseRecord(name=data["name"], subtype=subtype, **text)  # type: ignore[arg-type]


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
    """Write ``report`` as ``out_dir/<stem>.json`` (atomically); return its path.

    Example: ``write_case_json(Path("out"), report)`` -> ``Path("out/ct.json")``.
    """
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


def write_subtype_csv(out_dir: Path, rows: Mapping[str, int | None]) -> Path:
    """Write ``subtype_results.csv`` with one row per mask name with a subtype, sorted by name.

    Example: ``write_subtype_csv(Path("out"), {"ct.nii.gz": 1})`` -> ``Path("out/subtype_results.csv")``.
    """
    path = out_dir / SUBTYPE_CSV
    write_text_atomic(path, subtype_csv_text(sorted(rows.items())))
    return path


def summary_table(
    reports: Sequence[CaseReport], failures: Sequence[CaseFailure], skipped: int = 0
) -> str:
    """The end-of-run table: cases, skipped (finished earlier), failures, seconds per case, peak
    memory; then the failures.

    Example: ``summary_table(reports, [], skipped=2)`` has the line ``skipped           2``.
    """
    total_s = [sum(r.timings_s.values()) for r in reports]
    peak = max((r.peak_memory_bytes for r in reports), default=0)
    rows = [
        ("cases", str(len(reports) + len(failures) + skipped)),
        ("skipped", str(skipped)),
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
