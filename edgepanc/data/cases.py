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
                          "subtype_csv" (path of the subtype table, relative to the root)
    imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, imagesTs/CASE_0000.nii.gz
    *.csv                 the subtype table, header "Names,Subtype"; found through
                          "subtype_csv" or as the only CSV in the root. Names may be written
                          CASE, CASE.nii.gz or CASE_0000.nii.gz. Without a table, subtypes are
                          unknown (None), as for MSD Task07 Pancreas.

Structural problems (an image without its mask, a mask without its image, a subtype outside 0..2,
a case found twice) raise :class:`~edgepanc.errors.DatasetError` naming the file.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepanc.errors import DatasetError

SPLITS = ("train", "validation", "test")
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
    """All cases under ``root``, sorted by split then case id (empty list if none)."""
    root = Path(root)
    layout = detect_layout(root)
    cases = _discover_quiz(root) if layout == "quiz" else _discover_nnunet(root)
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
    images: dict[str, Path], masks: dict[str, Path], ending: str
) -> dict[str, tuple[Path, Path]]:
    """Pair ``CASE_0000`` images with ``CASE`` masks; DatasetError for any unpaired file."""
    pairs = {}
    for stem, image in images.items():
        case_id = stem[: -len(CHANNEL_SUFFIX)]
        if case_id not in masks:
            raise DatasetError(image, f"image has no mask (expected {case_id}{ending})")
        pairs[case_id] = (image, masks[case_id])
    for case_id, mask in masks.items():
        if case_id not in pairs:
            raise DatasetError(
                mask, f"mask has no image (expected {case_id}{CHANNEL_SUFFIX}{ending})"
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


def _discover_quiz(root: Path) -> list[Case]:
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
            for case_id, (image, mask) in _pair_images_and_masks(images, masks, ending).items():
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


def _read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DatasetError(path, "must hold a JSON object")
    return meta


def _find_subtype_csv(root: Path, meta: dict[str, Any]) -> Path | None:
    if "subtype_csv" in meta:
        path = root / str(meta["subtype_csv"])
        if not path.is_file():
            raise DatasetError(root / "dataset.json", f"subtype_csv names a missing file: {path}")
        return path
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
    with open(path, newline="", encoding="utf-8-sig") as fh:
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


def _discover_nnunet(root: Path) -> list[Case]:
    meta = _read_dataset_json(root)
    ending = str(meta.get("file_ending", ".nii.gz"))
    labels_dir = root / "labelsTr"
    masks = _volume_files(labels_dir, (ending,)) if labels_dir.is_dir() else {}
    pairs = _pair_images_and_masks(_channel0_images(root / "imagesTr", ending), masks, ending)
    tests = {
        s[: -len(CHANNEL_SUFFIX)]: p for s, p in _channel0_images(root / "imagesTs", ending).items()
    }

    if "numTraining" in meta and int(meta["numTraining"]) != len(pairs):
        raise DatasetError(
            root / "dataset.json",
            f"numTraining is {meta['numTraining']} but imagesTr/labelsTr hold {len(pairs)} cases",
        )
    validation = _validation_ids(root, meta, set(pairs), ending)
    csv_path = _find_subtype_csv(root, meta)
    subtypes = _read_subtype_csv(csv_path, set(pairs) | set(tests), ending) if csv_path else {}
    if csv_path:
        for case_id in pairs:
            if case_id not in subtypes:
                raise DatasetError(csv_path, f"has no row for labelled case {case_id}")

    cases = [
        Case(cid, image, mask, subtypes.get(cid), "validation" if cid in validation else "train")
        for cid, (image, mask) in pairs.items()
    ]
    cases += [Case(cid, image, None, subtypes.get(cid), "test") for cid, image in tests.items()]
    return cases


def _validation_ids(root: Path, meta: dict[str, Any], labelled: set[str], ending: str) -> set[str]:
    names = meta.get("validation", [])
    if not isinstance(names, list):
        raise DatasetError(root / "dataset.json", "'validation' must be a list of case ids")
    ids = set()
    for name in names:
        case_id = _case_id_of_name(str(name), labelled, ending)
        if case_id not in labelled:
            raise DatasetError(
                root / "dataset.json", f"'validation' lists {name}, which is not a labelled case"
            )
        ids.add(case_id)
    return ids
