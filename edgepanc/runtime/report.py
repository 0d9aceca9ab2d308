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
    mask: str | None  # None: only a DICOM SEG was asked for
    subtype: int | None  # None: no lesion kept, or a model without a trained subtype head
    probabilities: list[float]  # the subtype head's, also when no lesion was kept
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
    mirror_axes: list[str] = field(default_factory=list)  # test-time mirroring (--tta); []: none
    # the models averaged on each tile (an ensemble's); the network time in timings_s is theirs
    ensemble_members: int = 1
    # how far (mm) the lesion was grown into the gland: the bundle's margin for the subtype read
    lesion_margin_mm: float = 0.0
    throttle_events: list[dict[str, Any]] = field(default_factory=list)
    memory_plan: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    format: str = CASE_FORMAT
    status: str = FINISHED
    model_id: str | None = None  # see edgepanc.runtime.model.model_identity
    input_sha256: str | None = None
    mask_sha256: str | None = None
    preview_sha256: str | None = None
    lesion_found: bool = False
    lesion_diameter_mm: float | None = None  # longest (Feret) diameter of the kept lesion
    pancreas_mean_hu: float | None = None
    lesion_mean_hu: float | None = None
    # The row subtype_results.csv gets: the head's argmax even without a lesion, because the
    # submission format needs one row per case; None without a trained head.
    submission_subtype: int | None = None
    model: dict[str, Any] = field(default_factory=dict)  # the bundle: path, id, versions, data
    seg: str | None = None  # the DICOM SEG file, when one was written
    seg_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaseRecord:
    """What an existing case JSON that edgepanc wrote says about its case.

    Example: ``read_case_record(Path("out/ct.json")).status`` -> ``"finished"``.
    """

    name: str
    subtype: int | None  # the CSV row (``submission_subtype``); None: no trained subtype head
    status: str
    model_id: str | None
    input_sha256: str | None
    mask_sha256: str | None
    preview_sha256: str | None
    seg_sha256: str | None = None
    statistics: dict[str, Any] = field(default_factory=dict)  # its row of statistics.csv


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
    return case_record_from_dict(data)


def case_record_from_dict(data: Any) -> CaseRecord | None:
    """The record a case JSON's content gives; None when it is not edgepanc's.

    Case JSONs written before ``submission_subtype`` existed give ``subtype`` as the CSV row.

    Example: ``case_record_from_dict(report.to_dict()).statistics["lesion_found"]`` -> ``True``.
    """
    if not isinstance(data, dict) or data.get("format") != CASE_FORMAT:
        return None
    subtype = data.get("submission_subtype", data.get("subtype"))
    fields = ("status", "model_id", "input_sha256", "mask_sha256", "preview_sha256", "seg_sha256")
    text = {key: data.get(key) for key in fields}
    if not isinstance(data.get("name"), str) or not (subtype is None or type(subtype) is int):
        return None
    if not all(value is None or isinstance(value, str) for value in text.values()):
        return None
    statistics = statistics_row(data)
    return CaseRecord(name=data["name"], subtype=subtype, statistics=statistics, **text)  # type: ignore[arg-type]


def records_of(reports: Sequence[CaseReport]) -> dict[str, CaseRecord]:
    """The records of finished ``reports`` by mask name, as their case JSONs give them.

    Example: ``sorted(records_of([report]))`` -> ``["ct.nii.gz"]``.
    """
    records = {r.name: case_record_from_dict(r.to_dict()) for r in reports}
    return {name: record for name, record in records.items() if record is not None}


STATISTICS_CSV = "statistics.csv"
STATISTICS_COLUMNS = (
    "name",
    "pancreas_ml",
    "lesion_ml",
    "lesion_diameter_mm",
    "pancreas_mean_hu",
    "lesion_mean_hu",
    "lesion_found",
    "subtype",
    "model_id",
)


def statistics_row(data: dict[str, Any]) -> dict[str, Any]:
    """A case JSON's row of ``statistics.csv``: the fixed columns, then ``p_subtype<k>`` for
    each of the head's probabilities; a value the JSON lacks is empty.

    Example: ``statistics_row(report.to_dict())["lesion_diameter_mm"]`` -> ``21.4``.
    """
    lesion_found = data.get("lesion_found")
    row = {
        "name": data.get("name"),
        "pancreas_ml": data.get("pancreas_volume_ml"),
        "lesion_ml": data.get("lesion_volume_ml"),
        "lesion_diameter_mm": data.get("lesion_diameter_mm"),
        "pancreas_mean_hu": data.get("pancreas_mean_hu"),
        "lesion_mean_hu": data.get("lesion_mean_hu"),
        "lesion_found": None if lesion_found is None else str(bool(lesion_found)).lower(),
        "subtype": data.get("subtype"),
        "model_id": data.get("model_id"),
    }
    probabilities = data.get("probabilities")
    if isinstance(probabilities, list):
        row.update({f"p_subtype{k}": p for k, p in enumerate(probabilities)})
    return {
        key: value if isinstance(value, str | int | float) else None for key, value in row.items()
    }


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


def statistics_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """``statistics.csv``: :data:`STATISTICS_COLUMNS`, then ``p_subtype0..`` as far as any row
    has them; an absent value is an empty cell.

    Example: ``statistics_csv_text([row]).splitlines()[0]`` ->
    ``"name,pancreas_ml,lesion_ml,...,model_id,p_subtype0,p_subtype1,p_subtype2"``.
    """
    extra = max((sum(key.startswith("p_subtype") for key in row) for row in rows), default=0)
    columns = [*STATISTICS_COLUMNS, *(f"p_subtype{k}" for k in range(extra))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()


def write_result_tables(out_dir: Path, records: Mapping[str, CaseRecord]) -> list[Path]:
    """Write ``subtype_results.csv`` and ``statistics.csv`` from the finished cases' records,
    sorted by name: the one way both tables are made, after every case and by ``summarize``.

    Example: ``write_result_tables(Path("out"), records)`` ->
    ``[Path("out/subtype_results.csv"), Path("out/statistics.csv")]``.
    """
    ordered = [records[name] for name in sorted(records)]
    subtype = write_subtype_csv(out_dir, {r.name: r.subtype for r in ordered})
    statistics = out_dir / STATISTICS_CSV
    write_text_atomic(statistics, statistics_csv_text([r.statistics for r in ordered]))
    return [subtype, statistics]


def _format_ml(value: float) -> str:
    return f"{value:.1f} ml"


def case_line(report: CaseReport) -> str:
    """The console's line for a finished case: pancreas volume; lesion (volume, longest
    diameter) or none; subtype with its probability, or a dash.

    Example: ``case_line(report)`` ->
    ``"quiz_037.nii.gz  pancreas 74.2 ml  lesion 3.1 ml, 21.4 mm  subtype 1 (p 0.83)"``.
    """
    if report.lesion_found:
        diameter = report.lesion_diameter_mm
        size = f", {diameter:.1f} mm" if diameter is not None else ""
        lesion = f"lesion {_format_ml(report.lesion_volume_ml)}{size}"
    else:
        lesion = "lesion none"
    subtype = "subtype -"
    if report.subtype is not None and report.subtype < len(report.probabilities):
        subtype = f"subtype {report.subtype} (p {report.probabilities[report.subtype]:.2f})"
    return f"{report.name}  pancreas {_format_ml(report.pancreas_volume_ml)}  {lesion}  {subtype}"


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
