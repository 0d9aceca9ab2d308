"""Finding the cases of a data set on disk: the quiz layout and the nnU-Net raw layout.

Quiz layout (subtype from the folder)::

    train/subtype{0,1,2}/quiz_S_NNN_0000.nii.gz   image
    train/subtype{0,1,2}/quiz_S_NNN.nii.gz        mask
    validation/subtype{0,1,2}/...                 the same
    test/quiz_NNN_0000.nii.gz                     images only

nnU-Net raw layout::

    dataset.json          optional; keys used: "file_ending" (default ".nii.gz"),
                          "numTraining" (checked if present), "validation" (list of case ids:
                          these labelled cases get split "validation", all others "train"),
                          "subtype_csv" (path of the subtype table, relative to the root);
                          each field's type is checked (:class:`DatasetJson`), and every path
                          the file names (also in MSD "training"/"test" lists) must stay inside
                          the root: no absolute path, no "..", no link leading out
    imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, imagesTs/CASE_0000.nii.gz
    *.csv                 the subtype table, header "Names,Subtype"; found through
                          "subtype_csv" or as the only CSV in the root. Names may be written
                          CASE, CASE.nii.gz or CASE_0000.nii.gz. Without a table, subtypes are
                          unknown (None), as for MSD Task07 Pancreas.

Structural problems (an image without its mask, a mask without its image, a subtype outside 0..2,
a case found twice) raise :class:`~edgepanc.errors.DatasetError` naming the file; every unpaired
image or mask is found before that error is raised, so one error names them all
(:func:`raise_problems`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepanc.errors import DatasetError

SPLITS = ("train", "validation", "test")
# Enough to fix a batch of files at once; a longer list usually means a wrong folder or layout.
MAX_PROBLEMS = 20
SUBTYPES = (0, 1, 2)
CHANNEL_SUFFIX = "_0000"  # one CT channel, named the nnU-Net way
_SUBTYPE_FOLDER = re.compile(r"subtype(-?\d+)")
_QUIZ_NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Case:
    """One scan of a data set: its image, its mask (None for test scans) and its subtype."""

    case_id: str
    image: Path
    label: Path | None
    subtype: int | None
    split: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


def split_cases(cases: Iterable[Case], split: str) -> list[Case]:
    """The cases of one split, in their given order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [case for case in cases if case.split == split]


def detect_layout(root: str | Path) -> str:
    """``"nnunet"`` or ``"quiz"``; DatasetError if ``root`` is neither."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "no such data set folder")
    if (root / "imagesTr").is_dir() or (root / "dataset.json").is_file():
        return "nnunet"
    if any((root / split).is_dir() for split in SPLITS):
        return "quiz"
    raise DatasetError(
        root,
        "not a data set: expected train/, validation/, test/ (quiz layout) "
        "or imagesTr/, labelsTr/, dataset.json (nnU-Net raw layout)",
    )


def discover_cases(root: str | Path) -> list[Case]:
    """All cases under ``root``, sorted by split then case id (empty list if none).

    Example: ``[c.case_id for c in discover_cases("data100")][:1]`` -> ``["quiz_0_000"]``.
    """
    root = Path(root)
    layout = detect_layout(root)
    problems: list[DatasetError] = []
    discover = _discover_quiz if layout == "quiz" else _discover_nnunet
    cases = discover(root, problems)
    if problems:
        raise_problems(problems, root)
    raise_on_duplicates(cases)
    order = {split: i for i, split in enumerate(SPLITS)}
    return sorted(cases, key=lambda c: (order[c.split], c.case_id))


def raise_on_duplicates(cases: Iterable[Case]) -> None:
    """DatasetError if two cases share a case id (a scan listed twice leaks across splits)."""
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise DatasetError(
                case.image, f"case {case.case_id} appears twice (also {seen[case.case_id].image})"
            )
        seen[case.case_id] = case


def raise_problems(
    problems: Sequence[DatasetError],
    root: Path | None,
    num_cases: int | None = None,
    stopped: bool = False,
) -> None:
    """One problem: raise it as it is (it names its file). Several: one line listing each (the
    first MAX_PROBLEMS), on ``root`` (``<cases>`` for a list of cases); ``stopped``: the check
    stopped at the last one.

    Example: ``raise_problems([DatasetError(Path("a.nii.gz"), "truncated")], None)`` raises
    ``a.nii.gz: truncated``.
    """
    if len(problems) == 1:
        raise problems[0]
    head = f"{len(problems)} problems" + (f" in {num_cases} cases" if num_cases else "")
    if stopped:
        head += f" (checking stopped after {len(problems)})"
    elif len(problems) > MAX_PROBLEMS:
        head += f" (the first {MAX_PROBLEMS} listed)"
    listed = "; ".join(str(p) for p in problems[:MAX_PROBLEMS])
    raise DatasetError(root or Path("<cases>"), f"{head}: {listed}")


# --- shared helpers -------------------------------------------------------------------------


def _strip_ending(name: str, endings: Iterable[str]) -> str | None:
    for ending in endings:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def _volume_files(folder: Path, endings: tuple[str, ...]) -> dict[str, Path]:
    """Map stem (file name without ending) to path for the visible volume files in ``folder``."""
    files = {}
    for path in sorted(folder.iterdir()):
        stem = _strip_ending(path.name, endings)
        if stem and path.is_file() and not path.name.startswith("."):
            files[stem] = path
    return files


def _pair_images_and_masks(
    images: dict[str, Path], masks: dict[str, Path], ending: str, problems: list[DatasetError]
) -> dict[str, tuple[Path, Path]]:
    """Pair ``CASE_0000`` images with ``CASE`` masks; a DatasetError in ``problems`` for each
    unpaired file."""
    pairs = {}
    for stem, image in images.items():
        case_id = stem[: -len(CHANNEL_SUFFIX)]
        if case_id not in masks:
            problems.append(DatasetError(image, f"image has no mask (expected {case_id}{ending})"))
        else:
            pairs[case_id] = (image, masks[case_id])
    for case_id, mask in masks.items():
        if f"{case_id}{CHANNEL_SUFFIX}" not in images:
            problems.append(
                DatasetError(
                    mask, f"mask has no image (expected {case_id}{CHANNEL_SUFFIX}{ending})"
                )
            )
    return pairs


def _split_channel_files(files: dict[str, Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Separate ``*_0000`` images from the other files of a folder."""
    images = {s: p for s, p in files.items() if s.endswith(CHANNEL_SUFFIX)}
    others = {s: p for s, p in files.items() if not s.endswith(CHANNEL_SUFFIX)}
    return images, others


# --- quiz layout ----------------------------------------------------------------------------


def _subtype_of_folder(folder: Path) -> int:
    match = _SUBTYPE_FOLDER.fullmatch(folder.name)
    if not match:
        raise DatasetError(folder, "unexpected folder; expected subtype0, subtype1 or subtype2")
    subtype = int(match.group(1))
    if subtype not in SUBTYPES:
        raise DatasetError(folder, f"subtype {subtype} is outside 0..2")
    return subtype


def _discover_quiz(root: Path, problems: list[DatasetError]) -> list[Case]:
    cases = []
    for split in ("train", "validation"):
        folder = root / split
        if not folder.is_dir():
            continue
        for stray in _volume_files(folder, _QUIZ_NIFTI).values():
            raise DatasetError(stray, "volume outside a subtype0/1/2 folder")
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            subtype = _subtype_of_folder(sub)
            images, masks = _split_channel_files(_volume_files(sub, _QUIZ_NIFTI))
            ending = _ending_of(images, masks)
            pairs = _pair_images_and_masks(images, masks, ending, problems)
            for case_id, (image, mask) in pairs.items():
                cases.append(Case(case_id, image, mask, subtype, split))
    test = root / "test"
    if test.is_dir():
        cases += _unlabelled_cases(test, _QUIZ_NIFTI)
    return cases


def _ending_of(*groups: dict[str, Path]) -> str:
    # Name the expected partner file with the same ending as the files that are there.
    for group in groups:
        for path in group.values():
            return ".nii" if path.name.endswith(".nii") else ".nii.gz"
    return ".nii.gz"


def _unlabelled_cases(folder: Path, endings: tuple[str, ...]) -> list[Case]:
    images, others = _split_channel_files(_volume_files(folder, endings))
    for path in others.values():
        raise DatasetError(path, f"test images must be named CASE{CHANNEL_SUFFIX}{endings[0]}")
    return [Case(s[: -len(CHANNEL_SUFFIX)], p, None, None, "test") for s, p in images.items()]


# --- nnU-Net raw layout --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetJson:
    """The fields of an nnU-Net ``dataset.json`` that edgepanc uses, each type-checked.

    Every path it names is relative to the data folder and stays inside it (no absolute path, no
    ``..``, no link leading out), so a shared data set cannot make ``train`` read other files.

    Example::

        >>> DatasetJson.from_dict(Path("data"), {"numTraining": 2}).num_training
        2
    """

    root: Path
    file_ending: str = ".nii.gz"
    num_training: int | None = None
    validation: tuple[str, ...] = ()
    subtype_csv: Path | None = None

    @property
    def path(self) -> Path:
        return self.root / "dataset.json"

    @classmethod
    def read(cls, root: Path) -> DatasetJson:
        """Parse ``root/dataset.json`` (defaults when there is none); DatasetError naming it."""
        path = root / "dataset.json"
        if not path.is_file():
            return cls(root)
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(path, f"not valid JSON ({exc})") from None
        return cls.from_dict(root, meta)

    @classmethod
    def from_dict(cls, root: Path, meta: Any) -> DatasetJson:
        """Check the parsed content field by field; the first wrong one raises DatasetError."""
        path = root / "dataset.json"

        def fail(problem: str) -> DatasetError:
            return DatasetError(path, problem)

        if not isinstance(meta, dict):
            raise fail("must hold a JSON object")
        ending = meta.get("file_ending", ".nii.gz")
        if not isinstance(ending, str) or not _FILE_ENDING.fullmatch(ending):
            raise fail(f"file_ending must be a file name ending such as '.nii.gz', got {ending!r}")
        count = meta.get("numTraining")
        if count is not None and (not _is_int(count) or count < 0):
            raise fail(f"numTraining must be a non-negative whole number, got {count!r}")
        validation = meta.get("validation", [])
        if not isinstance(validation, list) or not all(isinstance(v, str) for v in validation):
            raise fail(f"'validation' must be a list of case ids, got {validation!r}")
        table = meta.get("subtype_csv")
        if table is not None and (not isinstance(table, str) or not table):
            raise fail(
                f"subtype_csv must be a file name relative to the data folder, got {table!r}"
            )
        for field_name, keys in (("training", ("image", "label")), ("test", ("image",))):
            for named in _listed_paths(meta, field_name, keys, fail):
                inside_data_folder(root, named, field_name)
        return cls(
            root=root,
            file_ending=ending,
            num_training=count,
            validation=tuple(validation),
            subtype_csv=None if table is None else inside_data_folder(root, table, "subtype_csv"),
        )


_FILE_ENDING = re.compile(r"(\.[A-Za-z0-9]+)+")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _listed_paths(
    meta: dict[str, Any], field_name: str, keys: tuple[str, ...], fail: Callable[[str], Exception]
) -> list[str]:
    """The paths of an MSD-style ``training``/``test`` list (strings or objects of strings).

    edgepanc finds the files by their folders, not through these lists; they are checked so
    that no path in the file can point outside the data folder.
    """
    entries = meta.get(field_name, [])
    if not isinstance(entries, list):
        raise fail(f"'{field_name}' must be a list, got {type(entries).__name__}")
    paths = []
    for entry in entries:
        values = [entry] if isinstance(entry, str) else None
        if isinstance(entry, dict):
            values = [entry[key] for key in keys if key in entry]
        if values is None or not all(isinstance(v, str) for v in values):
            raise fail(f"'{field_name}' entries must be paths or objects of paths, got {entry!r}")
        paths += values
    return paths


def inside_data_folder(root: Path, named: str, field_name: str) -> Path:
    """``root / named`` if that stays inside ``root``; DatasetError naming dataset.json if not.

    Example::

        >>> inside_data_folder(Path("data"), "tables/subtypes.csv", "subtype_csv")
        PosixPath('data/tables/subtypes.csv')
    """
    relative = Path(named)
    if relative.is_absolute() or ".." in relative.parts:
        raise DatasetError(
            root / "dataset.json",
            f"{field_name} {named!r} is not inside the data folder "
            "(paths are relative to it, without '..')",
        )
    path = root / relative
    if path.exists() and not path.resolve().is_relative_to(root.resolve()):
        raise DatasetError(
            root / "dataset.json",
            f"{field_name} {named!r} leads outside the data folder through a link",
        )
    return path


def _find_subtype_csv(meta: DatasetJson) -> Path | None:
    root = meta.root
    if meta.subtype_csv is not None:
        if not meta.subtype_csv.is_file():
            raise DatasetError(meta.path, f"subtype_csv names a missing file: {meta.subtype_csv}")
        return meta.subtype_csv
    found = sorted(root.glob("*.csv"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DatasetError(
            root,
            f"several CSV files ({names}); name the subtype table in dataset.json 'subtype_csv'",
        )
    return found[0] if found else None


def _case_id_of_name(name: str, known: set[str], ending: str) -> str:
    """Resolve a table entry written as CASE, CASE<ending> or CASE_0000<ending> to a case id."""
    stem = _strip_ending(name, (ending, ".nii.gz", ".nii")) or name
    if stem not in known and stem.endswith(CHANNEL_SUFFIX):
        return stem[: -len(CHANNEL_SUFFIX)]
    return stem


def _read_subtype_csv(path: Path, known: set[str], ending: str) -> dict[str, int]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(path, f"not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        return _parse_subtype_csv(path, text, known, ending)
    except csv.Error as exc:
        raise DatasetError(path, f"not a readable CSV table ({exc})") from None


def _parse_subtype_csv(path: Path, text: str, known: set[str], ending: str) -> dict[str, int]:
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in reader.fieldnames or []]
        if "Names" not in header or "Subtype" not in header:
            raise DatasetError(path, f"header must have Names and Subtype columns, got {header}")
        reader.fieldnames = header
        subtypes: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            name, value = (row["Names"] or "").strip(), (row["Subtype"] or "").strip()
            case_id = _case_id_of_name(name, known, ending)
            try:
                subtype = int(value)
            except ValueError:
                raise DatasetError(
                    path, f"line {line}: subtype {value!r} of {name} is not an integer"
                ) from None
            if subtype not in SUBTYPES:
                raise DatasetError(
                    path, f"line {line}: subtype {subtype} of {name} is outside 0..2"
                )
            if case_id in subtypes:
                raise DatasetError(path, f"line {line}: case {case_id} is listed twice")
            subtypes[case_id] = subtype
    return subtypes


def _channel0_images(folder: Path, ending: str) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    images, others = _split_channel_files(_volume_files(folder, (ending,)))
    for path in others.values():
        raise DatasetError(
            path, f"edgepanc reads one CT channel: expected CASE{CHANNEL_SUFFIX}{ending}"
        )
    return images


def _discover_nnunet(root: Path, problems: list[DatasetError]) -> list[Case]:
    meta = DatasetJson.read(root)
    ending = meta.file_ending
    labels_dir = root / "labelsTr"
    masks = _volume_files(labels_dir, (ending,)) if labels_dir.is_dir() else {}
    images = _channel0_images(root / "imagesTr", ending)
    pairs = _pair_images_and_masks(images, masks, ending, problems)
    if problems:  # the checks below count and name cases: the pairs must be complete
        return []
    tests = {
        s[: -len(CHANNEL_SUFFIX)]: p for s, p in _channel0_images(root / "imagesTs", ending).items()
    }

    if meta.num_training is not None and meta.num_training != len(pairs):
        raise DatasetError(
            meta.path,
            f"numTraining is {meta.num_training} but imagesTr/labelsTr hold {len(pairs)} cases",
        )
    validation = _validation_ids(meta, set(pairs))
    csv_path = _find_subtype_csv(meta)
    subtypes = _read_subtype_csv(csv_path, set(pairs) | set(tests), ending) if csv_path else {}
    missing = sorted(case_id for case_id in pairs if case_id not in subtypes) if csv_path else []
    if csv_path and missing:
        named = ", ".join(missing[:MAX_PROBLEMS]) + (", ..." if len(missing) > MAX_PROBLEMS else "")
        cases_word = "labelled case" if len(missing) == 1 else f"{len(missing)} labelled cases:"
        raise DatasetError(csv_path, f"has no row for {cases_word} {named}")

    cases = [
        Case(cid, image, mask, subtypes.get(cid), "validation" if cid in validation else "train")
        for cid, (image, mask) in pairs.items()
    ]
    cases += [Case(cid, image, None, subtypes.get(cid), "test") for cid, image in tests.items()]
    return cases


def _validation_ids(meta: DatasetJson, labelled: set[str]) -> set[str]:
    ids = set()
    for name in meta.validation:
        case_id = _case_id_of_name(name, labelled, meta.file_ending)
        if case_id not in labelled:
            raise DatasetError(
                meta.path, f"'validation' lists {name}, which is not a labelled case"
            )
        ids.add(case_id)
    return ids
