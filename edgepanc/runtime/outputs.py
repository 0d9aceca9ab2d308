"""Every file a run would write, checked before any case runs, so that nothing of the user's is lost.

The rules, in order:

1. Never an input or a reference mask: an output whose resolved path (links followed) or file
   identity is a scan, a file of a DICOM series, a reference mask (``X.nii.gz`` beside an image
   ``X_0000.nii.gz``, or in ``labelsTr`` for one in ``imagesTr``) or a file of the model bundle
   is refused, ``--overwrite`` or not.
2. An output name taken by a folder is refused (a rename cannot replace it). Without
   ``--overwrite`` an existing output is replaced only if this tool wrote it: a case JSON
   with edgepanc's ``format``; a mask or preview whose SHA-256 that JSON records; a
   ``subtype_results.csv`` whose every row names a case with such a JSON (a hand-added row makes
   the table the user's). A broken table is refused naming its problem.
3. Continuing: a case whose JSON says ``finished``, whose mask still has the recorded digest, and
   that was made by this model from this input is skipped. Finished by another model or from
   another scan, it is refused without ``--overwrite`` (rerunning would replace those results);
   a mask whose JSON still says ``writing`` (a kill between the two) is redone.
4. ``subtype_results.csv`` is rebuilt from the case records: the finished cases already in the
   folder plus those this run finishes.

Example: ``plan_outputs(scans, Path("out"), model_id="3f2a...", overwrite=False).skipped`` -> ``2``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgepanc.errors import InputError
from edgepanc.runtime.report import (
    FINISHED,
    SUBTYPE_CSV,
    CaseRecord,
    case_json_path,
    read_case_record,
)
from edgepanc.runtime.scans import CHANNEL_SUFFIX, IMAGE_SUFFIXES, CaseOutputs, image_stem

_CHUNK = 1 << 20
_OVERWRITE_HINT = "pass --overwrite to replace it, or choose another --out"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks.

    Example: ``file_sha256(Path("out/ct.nii.gz"))`` -> ``"9f86d0..."``.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def scan_sha256(scan: Path) -> str:
    """The SHA-256 of a scan: its file, or a DICOM folder's files with their names.

    Example: ``scan_sha256(Path("series_folder"))`` -> ``"5e8848..."``.
    """
    if not scan.is_dir():
        return file_sha256(scan)
    digest = hashlib.sha256()
    for path in sorted(p for p in scan.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(scan)}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PlannedCase:
    """One scan, where its outputs go, and whether an earlier run already finished it.

    Example: ``PlannedCase(Path("ct_0000.nii.gz"), outputs, skip=False)``.
    """

    scan: Path
    outputs: CaseOutputs
    skip: bool = False


@dataclass
class OutputPlan:
    """The cases of a run and the ``Names -> Subtype`` rows kept from earlier finished cases.

    Example: ``[c.scan for c in plan.cases if not c.skip]`` are the scans this run computes.
    """

    out_dir: Path
    cases: list[PlannedCase]
    rows: dict[str, int | None]  # None: a case without a subtype (no CSV row)

    @property
    def skipped(self) -> int:
        """How many cases an earlier run finished."""
        return sum(case.skip for case in self.cases)


def plan_outputs(
    scans: Sequence[Path],
    out_dir: Path,
    model_id: str | None,
    overwrite: bool = False,
    preview: bool = False,
    protected: Iterable[Path] = (),
) -> OutputPlan:
    """Check every output of a run up front (see the module's rules); InputError naming the first
    problem (and how many more there are) before anything is written.

    ``protected`` adds files never to write over besides the scans and their reference masks
    (the model bundle's).

    Example: ``plan_outputs([Path("in/ct_0000.nii.gz")], Path("in"), None, overwrite=True)``
    raises ``InputError`` when ``in/ct.nii.gz`` is that image's reference mask.
    """
    cases = [PlannedCase(scan, CaseOutputs.named(scan, out_dir)) for scan in scans]
    guard = _Protected(scans, protected)
    files = [path for case in cases for path in _case_files(case.outputs, preview)]
    problems = [
        problem
        for path in [*files, out_dir / SUBTYPE_CSV]
        if (problem := guard.check(path) or _folder_in_the_way(path)) is not None
    ]
    _raise_first(problems)
    records = _folder_records(out_dir)
    finished = {r.name: r.subtype for r in records.values() if _mask_is_recorded(out_dir, r)}
    if not overwrite:
        cases = [_continue_or_refuse(c, records, model_id, preview, problems) for c in cases]
        _check_subtype_csv(out_dir / SUBTYPE_CSV, records, problems)
        _raise_first(problems)
    running = {case.outputs.name for case in cases if not case.skip}
    rows = {name: subtype for name, subtype in finished.items() if name not in running}
    return OutputPlan(out_dir, cases, rows)


def _case_files(outputs: CaseOutputs, preview: bool) -> list[Path]:
    return [outputs.mask, outputs.case_json, *([outputs.preview] if preview else [])]


def _folder_in_the_way(path: Path) -> InputError | None:
    if path.is_dir() and not path.is_symlink():  # a rename cannot replace a folder
        return InputError(path, "is a folder where edgepanc writes a file; choose another --out")
    return None


def _raise_first(problems: list[InputError]) -> None:
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(first.path, first.problem + more)


class _Protected:
    """The inputs, their reference masks and the extra files, by resolved path and identity."""

    def __init__(self, scans: Sequence[Path], extra: Iterable[Path]) -> None:
        self.what: dict[Path, str] = {}
        for scan in scans:
            files = sorted(p for p in scan.rglob("*") if p.is_file()) if scan.is_dir() else [scan]
            self._add([scan, *files], f"the input {scan}")
            self._add(reference_masks(scan), f"the reference mask of {scan}")
        self._add(list(extra), "a file of the model bundle")
        self.identity: dict[tuple[int, int], str] = {}
        for path, description in self.what.items():
            with contextlib.suppress(OSError):
                stat = path.stat()
                self.identity[(stat.st_dev, stat.st_ino)] = description

    def _add(self, paths: Sequence[Path], description: str) -> None:
        for path in paths:
            self.what.setdefault(path.resolve(), description)

    def check(self, output: Path) -> InputError | None:
        description = self.what.get(output.resolve())
        if description is None:
            with contextlib.suppress(OSError):
                stat = output.stat()
                description = self.identity.get((stat.st_dev, stat.st_ino))
        if description is None:
            return None
        target = output.resolve()
        return InputError(
            output,
            f"would write over {description} ({target}); edgepanc never writes over an input, "
            "a reference mask or the model, --overwrite or not: choose another --out",
        )


def reference_masks(scan: Path) -> list[Path]:
    """The reference masks of an image ``X_0000.<ext>`` that exist: ``X.<ext>`` beside it (quiz
    layout) and, for an image in ``imagesTr``/``imagesTs``, ``X.<ext>`` in ``labelsTr``/``labelsTs``
    (nnU-Net layout).

    Example: ``reference_masks(Path("test/quiz_037_0000.nii.gz"))`` ->
    ``[Path("test/quiz_037.nii.gz")]`` when that file is there.
    """
    stem = None if scan.is_dir() else image_stem(scan)
    if stem is None or not stem.endswith(CHANNEL_SUFFIX):
        return []
    base = stem[: -len(CHANNEL_SUFFIX)]
    folders = [scan.parent]
    if scan.parent.name.startswith("images"):
        folders.append(scan.parent.with_name("labels" + scan.parent.name[len("images") :]))
    candidates = [folder / (base + suffix) for folder in folders for suffix in IMAGE_SUFFIXES]
    return [path for path in candidates if path.exists()]


def _folder_records(out_dir: Path) -> dict[str, CaseRecord]:
    """The case JSONs edgepanc wrote in ``out_dir``, by file name."""
    if not out_dir.is_dir():
        return {}
    records = {}
    for path in out_dir.glob("*.json"):
        record = read_case_record(path)
        # a record names its own mask, beside it: a name leading elsewhere is not ours
        if record is None or Path(record.name).name != record.name:
            continue
        if case_json_path(out_dir, record.name) == path:
            records[path.name] = record
    return records


def _mask_is_recorded(out_dir: Path, record: CaseRecord) -> bool:
    """Whether the finished ``record``'s mask is in ``out_dir`` with the digest it records."""
    return record.status == FINISHED and _owned(out_dir / record.name, record.mask_sha256)


def _owned(path: Path, recorded: str | None) -> bool:
    if recorded is None or path.is_symlink() or not path.is_file():
        return False
    return file_sha256(path) == recorded


def _continue_or_refuse(
    case: PlannedCase,
    records: dict[str, CaseRecord],
    model_id: str | None,
    preview: bool,
    problems: list[InputError],
) -> PlannedCase:
    """The case, marked to skip when it finished earlier; problems gets what blocks it."""
    outputs = case.outputs
    record = records.get(outputs.case_json.name)
    if record is None:
        if outputs.case_json.exists() or outputs.case_json.is_symlink():
            problems.append(
                InputError(
                    outputs.case_json, f"exists and edgepanc did not write it; {_OVERWRITE_HINT}"
                )
            )
    elif _mask_is_recorded(outputs.mask.parent, record):
        if record.model_id == model_id and record.input_sha256 == scan_sha256(case.scan):
            return PlannedCase(case.scan, outputs, skip=True)
        other = "another model" if record.model_id != model_id else f"another scan than {case.scan}"
        problems.append(
            InputError(outputs.mask, f"was made from {other} by an earlier run; {_OVERWRITE_HINT}")
        )
        return case
    mask_ours = record is not None and _owned(outputs.mask, record.mask_sha256)
    if (outputs.mask.exists() or outputs.mask.is_symlink()) and not mask_ours:
        problems.append(InputError(outputs.mask, f"mask already exists; {_OVERWRITE_HINT}"))
    preview_ours = record is not None and _owned(outputs.preview, record.preview_sha256)
    if preview and (outputs.preview.exists() or outputs.preview.is_symlink()) and not preview_ours:
        problems.append(
            InputError(outputs.preview, f"exists and edgepanc did not write it; {_OVERWRITE_HINT}")
        )
    return case


def _check_subtype_csv(
    path: Path, records: dict[str, CaseRecord], problems: list[InputError]
) -> None:
    """An existing table must be edgepanc's: every row a case it recorded here."""
    if not (path.exists() or path.is_symlink()):
        return
    try:
        rows = read_subtype_rows(path)
    except InputError as exc:
        problems.append(InputError(path, f"{exc.problem}; {_OVERWRITE_HINT}"))
        return
    known = {r.name: r for r in records.values()}
    for line, (name, subtype) in rows:
        record = known.get(name)
        # a row of a case being rewritten may still show its earlier subtype
        if record is None or (record.status == FINISHED and record.subtype != subtype):
            problems.append(
                InputError(
                    path,
                    f"line {line} ({name},{subtype}) is not a result edgepanc recorded here; "
                    f"{_OVERWRITE_HINT}",
                )
            )
            return


def read_subtype_rows(path: Path) -> list[tuple[int, tuple[str, int]]]:
    """``(line, (name, subtype))`` for each row of a ``Names,Subtype`` table; InputError (no path
    prefix in the problem) when it is not one.

    Example: ``read_subtype_rows(Path("out/subtype_results.csv"))`` -> ``[(2, ("ct.nii.gz", 1))]``.
    """
    if path.is_symlink() or not path.is_file():
        raise InputError(path, "is not a plain file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header != ["Names", "Subtype"]:
            raise InputError(path, "is not a Names,Subtype table (first line)")
        rows = []
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) != 2:
                raise InputError(path, f"line {line} has {len(row)} fields, not Names,Subtype")
            try:
                rows.append((line, (row[0], int(row[1]))))
            except ValueError:
                raise InputError(
                    path, f"line {line}: subtype {row[1]!r} is not an integer"
                ) from None
    except csv.Error as exc:
        raise InputError(path, f"is not a readable CSV table ({exc})") from None
    return rows


__all__ = [
    "OutputPlan",
    "PlannedCase",
    "file_sha256",
    "plan_outputs",
    "read_subtype_rows",
    "reference_masks",
    "scan_sha256",
]
