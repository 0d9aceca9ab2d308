"""Every file a run would write, checked before any case runs, so that nothing of the user's is lost.

The rules, in order:

1. Never an input or a reference mask: an output whose resolved path (links followed) or file
   identity is a scan, a file of a DICOM series, a reference mask (``X.nii.gz`` beside an image
   ``X_0000.nii.gz``, or in ``labelsTr`` for one in ``imagesTr``) or a file of the model bundle
   is refused, ``--overwrite`` or not.
2. An output name taken by a folder is refused (a rename cannot replace it). Without
   ``--overwrite`` an existing output is replaced only if this tool wrote it: a case JSON
   with edgepanc's ``format``; a mask, DICOM SEG or preview whose SHA-256 that JSON records; a
   ``subtype_results.csv`` or ``statistics.csv`` whose every row names a case with such a JSON
   (a hand-added row makes the table the user's); an ``overview.png`` carrying edgepanc's PNG
   text key. A broken table is refused naming its problem.
3. Continuing: a case whose JSON says ``finished``, whose mask still has the recorded digest, and
   that was made by this model from this input is skipped. Finished by another model or from
   another scan, it is refused without ``--overwrite`` (rerunning would replace those results);
   a mask whose JSON still says ``writing`` (a kill between the two) is redone.
4. ``subtype_results.csv`` and ``statistics.csv`` are rebuilt from the case records: the finished
   cases already in the folder plus those this run finishes (:func:`finished_records`).

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
    STATISTICS_COLUMNS,
    STATISTICS_CSV,
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
    """The cases of a run and the records of earlier finished cases its tables keep.

    Example: ``[c.scan for c in plan.cases if not c.skip]`` are the scans this run computes.
    """

    out_dir: Path
    cases: list[PlannedCase]
    records: dict[str, CaseRecord]  # by mask name: finished cases this run does not redo

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
    kinds: OutputKinds | None = None,
) -> OutputPlan:
    """Check every output of a run up front (see the module's rules); InputError naming the first
    problem (and how many more there are) before anything is written.

    ``protected`` adds files never to write over besides the scans and their reference masks
    (the model bundle's).

    Example: ``plan_outputs([Path("in/ct_0000.nii.gz")], Path("in"), None, overwrite=True)``
    raises ``InputError`` when ``in/ct.nii.gz`` is that image's reference mask.
    """
    kinds = kinds or OutputKinds(preview=preview)
    cases = [PlannedCase(scan, CaseOutputs.named(scan, out_dir)) for scan in scans]
    guard = _Protected(scans, protected)
    files = [path for case in cases for path in _case_files(case, kinds)]
    tables = [out_dir / SUBTYPE_CSV, out_dir / STATISTICS_CSV]
    overview = [out_dir / OVERVIEW_PNG] if kinds.overview else []
    problems = [
        problem
        for path in [*files, *tables, *overview]
        if (problem := guard.check(path) or _folder_in_the_way(path)) is not None
    ]
    _raise_first(problems)
    records = _folder_records(out_dir)
    if not overwrite:
        cases = [_continue_or_refuse(c, records, model_id, kinds, problems) for c in cases]
        _check_subtype_csv(out_dir / SUBTYPE_CSV, records, problems)
        _check_statistics_csv(out_dir / STATISTICS_CSV, records, problems)
        if kinds.overview:
            _check_overview(out_dir / OVERVIEW_PNG, problems)
        _raise_first(problems)
    running = {case.outputs.name for case in cases if not case.skip}
    finished = {
        r.name: r
        for r in records.values()
        if _outputs_recorded(out_dir, r) and r.name not in running
    }
    return OutputPlan(out_dir, cases, finished)


OVERVIEW_PNG = "overview.png"
# The PNG text key edgepanc puts into overview.png, so that a rerun knows the file is its own.
PNG_OWNER_KEY = "edgepanc-output"


@dataclass(frozen=True)
class OutputKinds:
    """Which files a run writes per case (mask, DICOM SEG, preview) and for the folder (overview).

    Example: ``OutputKinds(nifti=True, seg=True, preview=True)`` for a DICOM input by default.
    """

    nifti: bool = True
    seg: bool = False  # for the scans that are DICOM series
    preview: bool = False
    overview: bool = False

    def seg_for(self, scan: Path) -> bool:
        """Whether ``scan`` gets a DICOM SEG: only a DICOM series (a folder) can be referenced.

        Example: ``OutputKinds(seg=True).seg_for(Path("ct.nii.gz"))`` -> ``False``.
        """
        return self.seg and scan.is_dir()


def finished_records(out_dir: Path) -> dict[str, CaseRecord]:
    """The finished cases in ``out_dir`` whose outputs still have their recorded digests, by
    mask name: what the result tables are built from.

    Example: ``sorted(finished_records(Path("out")))`` -> ``["ct1.nii.gz", "ct2.nii.gz"]``.
    """
    return {r.name: r for r in _folder_records(out_dir).values() if _outputs_recorded(out_dir, r)}


def check_result_tables(out_dir: Path, records: dict[str, CaseRecord]) -> None:
    """InputError unless each existing table in ``out_dir`` is one edgepanc wrote from
    ``records`` (every row a recorded case).

    Example: ``check_result_tables(Path("out"), finished_records(Path("out")))`` returns quietly.
    """
    problems: list[InputError] = []
    by_file = {case_json_path(out_dir, r.name).name: r for r in records.values()}
    for table in (out_dir / SUBTYPE_CSV, out_dir / STATISTICS_CSV):
        if (problem := _folder_in_the_way(table)) is not None:
            problems.append(problem)
    _raise_first(problems)
    _check_subtype_csv(out_dir / SUBTYPE_CSV, by_file, problems)
    _check_statistics_csv(out_dir / STATISTICS_CSV, by_file, problems)
    _raise_first(problems)


def _case_files(case: PlannedCase, kinds: OutputKinds) -> list[Path]:
    outputs = case.outputs
    return [
        outputs.case_json,
        *([outputs.mask] if kinds.nifti else []),
        *([outputs.seg] if kinds.seg_for(case.scan) else []),
        *([outputs.preview] if kinds.preview else []),
    ]


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


def _outputs_recorded(out_dir: Path, record: CaseRecord) -> bool:
    """Whether the finished ``record``'s mask and SEG (those it records) are in ``out_dir`` with
    the digests it records."""
    if record.status != FINISHED or (record.mask_sha256 is None and record.seg_sha256 is None):
        return False
    mask_ok = record.mask_sha256 is None or _owned(out_dir / record.name, record.mask_sha256)
    seg = CaseOutputs.named(Path(record.name), out_dir).seg
    return mask_ok and (record.seg_sha256 is None or _owned(seg, record.seg_sha256))


def _owned(path: Path, recorded: str | None) -> bool:
    if recorded is None or path.is_symlink() or not path.is_file():
        return False
    return file_sha256(path) == recorded


def _continue_or_refuse(
    case: PlannedCase,
    records: dict[str, CaseRecord],
    model_id: str | None,
    kinds: OutputKinds,
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
    elif _outputs_recorded(outputs.mask.parent, record):
        same = record.model_id == model_id and record.input_sha256 == scan_sha256(case.scan)
        has_all = (record.mask_sha256 is not None or not kinds.nifti) and (
            record.seg_sha256 is not None or not kinds.seg_for(case.scan)
        )
        if same and has_all:
            return PlannedCase(case.scan, outputs, skip=True)
        if same:  # finished without an output this run asks for: computed again
            return case
        other = "another model" if record.model_id != model_id else f"another scan than {case.scan}"
        problems.append(
            InputError(outputs.mask, f"was made from {other} by an earlier run; {_OVERWRITE_HINT}")
        )
        return case
    mask_ours = record is not None and _owned(outputs.mask, record.mask_sha256)
    if (outputs.mask.exists() or outputs.mask.is_symlink()) and not mask_ours:
        problems.append(InputError(outputs.mask, f"mask already exists; {_OVERWRITE_HINT}"))
    for path, recorded, wanted in (
        (outputs.preview, None if record is None else record.preview_sha256, kinds.preview),
        (outputs.seg, None if record is None else record.seg_sha256, kinds.seg_for(case.scan)),
    ):
        taken = path.exists() or path.is_symlink()
        if wanted and taken and not (_owned(path, recorded) or _marked_as_ours(path)):
            problems.append(
                InputError(path, f"exists and edgepanc did not write it; {_OVERWRITE_HINT}")
            )
    return case


def _recorded_now(path: Path, name: str) -> CaseRecord | None:
    """The finished record of ``name`` read again: a process running another ``--part`` into
    the same folder may have finished it after this one read the folder."""
    record = read_case_record(case_json_path(path.parent, name))
    return record if record is not None and record.status == FINISHED else None


def _check_statistics_csv(
    path: Path, records: dict[str, CaseRecord], problems: list[InputError]
) -> None:
    """An existing statistics table must be edgepanc's: its header, every row a recorded case."""
    if not (path.exists() or path.is_symlink()):
        return
    try:
        if path.is_symlink() or not path.is_file():
            raise InputError(path, "is not a plain file")
        reader = csv.reader(io.StringIO(path.read_bytes().decode("utf-8")))
        header = next(reader, None)
        names = [row[0] for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error, InputError):
        header, names = None, []
    if header is None or tuple(header[: len(STATISTICS_COLUMNS)]) != STATISTICS_COLUMNS:
        problems.append(
            InputError(path, f"is not a statistics table edgepanc wrote; {_OVERWRITE_HINT}")
        )
        return
    known = {r.name for r in records.values()}
    for name in names:
        if name not in known and _recorded_now(path, name) is None:
            problems.append(
                InputError(
                    path, f"row {name} is not a result edgepanc recorded here; {_OVERWRITE_HINT}"
                )
            )
            return


def _marked_as_ours(path: Path) -> bool:
    """Whether a picture or DICOM SEG carries the mark edgepanc writes into it: a preview or
    SEG a kill left before its case JSON recorded it is still known as edgepanc's."""
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix == ".png":
        with contextlib.suppress(Exception):  # whatever PIL makes of a file that is no PNG
            from PIL import Image

            with Image.open(path) as image:
                return image.text.get(PNG_OWNER_KEY) == path.name  # type: ignore[attr-defined]
        return False
    with contextlib.suppress(Exception):  # whatever pydicom makes of a file that is no DICOM
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return ds.get("Modality") == "SEG" and ds.get("Manufacturer") == SEG_MANUFACTURER
    return False


SEG_MANUFACTURER = "edgepanc"  # what a DICOM SEG edgepanc writes names as its manufacturer


def _check_overview(path: Path, problems: list[InputError]) -> None:
    if (path.exists() or path.is_symlink()) and not _marked_as_ours(path):
        problems.append(
            InputError(path, f"exists and edgepanc did not write it; {_OVERWRITE_HINT}")
        )


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
        record = known.get(name) or _recorded_now(path, name)
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
    "OVERVIEW_PNG",
    "OutputKinds",
    "OutputPlan",
    "check_result_tables",
    "finished_records",
    "PlannedCase",
    "file_sha256",
    "plan_outputs",
    "read_subtype_rows",
    "reference_masks",
    "scan_sha256",
]
