"""A run folder's results across cases, rebuilt from its case JSONs.

``edgepanc summarize OUT`` (after several ``run --part K/N`` processes wrote into one folder) and
the end of ``edgepanc run`` both come here; the tables themselves are written by
:func:`~edgepanc.runtime.report.write_result_tables`, the one implementation ``run`` also uses
after every case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgepanc.errors import InputError
from edgepanc.runtime.outputs import (
    OVERVIEW_PNG,
    OutputKinds,
    check_result_tables,
    finished_records,
    plan_outputs,
)
from edgepanc.runtime.preview import save_overview
from edgepanc.runtime.report import CaseRecord, write_result_tables
from edgepanc.runtime.scans import CaseOutputs


def write_overview(out_dir: Path, records: Mapping[str, CaseRecord]) -> Path | None:
    """``overview.png`` from the finished cases' previews (one row per case, sorted by name);
    None (nothing written) when no case has a preview.

    Example: ``write_overview(Path("out"), finished_records(Path("out")))`` ->
    ``Path("out/overview.png")``.
    """
    rows = []
    for name in sorted(records):
        record = records[name]
        preview = CaseOutputs.named(Path(name), out_dir).preview
        rows.append((record.statistics, preview if record.preview_sha256 else None))
    if not any(preview for _, preview in rows):
        return None
    return save_overview(out_dir / OVERVIEW_PNG, rows)


@dataclass(frozen=True)
class Summary:
    """What ``summarize`` wrote: the cases found and the files.

    Example: ``summarize(Path("out")).cases`` -> ``36``.
    """

    cases: int
    written: list[Path]


def summarize(out_dir: Path, overwrite: bool = False) -> Summary:
    """Rebuild ``subtype_results.csv``, ``statistics.csv`` (and ``overview.png`` where cases
    have previews) in ``out_dir`` from its finished case JSONs.

    Without ``overwrite`` an existing table or overview that edgepanc did not write is refused
    (InputError), as ``run`` refuses it.

    Example: ``summarize(Path("out")).written`` ->
    ``[Path("out/subtype_results.csv"), Path("out/statistics.csv"), Path("out/overview.png")]``.
    """
    if not out_dir.is_dir():
        raise InputError(out_dir, "no such folder")
    records = finished_records(out_dir)
    if not records:
        raise InputError(out_dir, "holds no finished case of edgepanc run")
    has_previews = any(r.preview_sha256 for r in records.values())
    if not overwrite:
        check_result_tables(out_dir, records)
        if has_previews:  # the overview's own check, with no case to plan
            plan_outputs([], out_dir, None, kinds=OutputKinds(overview=True))
    written = write_result_tables(out_dir, records)
    overview = write_overview(out_dir, records)
    return Summary(len(records), [*written, *([overview] if overview else [])])


__all__ = ["Summary", "summarize", "write_overview"]
