"""Which scans a run reads, and where each one's outputs go.

A path is one scan (an image file or a DICOM series folder) or a folder searched for them; each
scan's mask is named after it (:func:`mask_name_for`), with its preview and case JSON beside it
(:class:`CaseOutputs`). Everything written for a case inside :func:`all_or_none` is removed again
when the case fails, so an output folder never holds a mask without its JSON. Hidden files (among
them the temporaries of :mod:`edgepanc.io.atomic`) are never taken for scans.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgepanc.errors import InputError
from edgepanc.io.volume import is_dicom_series_folder
from edgepanc.runtime.report import case_json_path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
CHANNEL_SUFFIX = "_0000"
MASK_SUFFIX = ".nii.gz"


def image_stem(path: Path) -> str | None:
    """The name without its image suffix, or None when it is no image file name.

    Example: ``image_stem(Path("ct_0000.nii.gz"))`` -> ``"ct_0000"``.
    """
    for suffix in IMAGE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def mask_name_for(scan: Path) -> str:
    """The mask file name for a scan: ``quiz_037_0000.nii.gz`` -> ``quiz_037.nii.gz``.

    Any other image keeps its stem (``name.nrrd`` -> ``name.nii.gz``); a DICOM folder gives its
    folder name. Masks are always NIfTI.

    Example: ``mask_name_for(Path("scans/ct_0000.nii.gz"))`` -> ``"ct.nii.gz"``.
    """
    stem = None if scan.is_dir() else image_stem(scan)
    stem = stem or scan.name
    if stem.endswith(CHANNEL_SUFFIX):
        stem = stem[: -len(CHANNEL_SUFFIX)]
    return stem + MASK_SUFFIX


def discover_scans(path: Path) -> list[Path]:
    """The scans to run: ``path`` itself, or the images and DICOM series folders below it.

    Folders are searched recursively, so a data set split such as ``validation/`` with its
    ``subtype0..2/`` folders runs as one batch. In a folder, a file ``X.nii.gz`` beside
    ``X_0000.nii.gz`` is that image's reference mask (quiz and nnU-Net layouts) and is not run.
    Two scans that would write the same mask name are an error, since one would overwrite the other.

    Example: ``discover_scans(Path("validation"))`` -> every scan below it, such as
    ``validation/subtype0/quiz_0_041_0000.nii.gz``.
    """
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_file() or is_dicom_series_folder(path):
        return [path]
    scans = _scans_below(path)
    if not scans:
        raise InputError(path, "no scans found (NIfTI, NRRD, MHA files or DICOM series folders)")
    seen: dict[str, Path] = {}
    for scan in scans:
        name = mask_name_for(scan)
        if name in seen:
            raise InputError(
                scan, f"would write the same mask {name} as {seen[name]}; rename one of them"
            )
        seen[name] = scan
    return scans


def take_part(scans: list[Path], part: int, parts: int) -> list[Path]:
    """The ``part``-th of every ``parts`` scans (1-based) in the order of their mask names, so
    that ``parts`` processes given the same folder split it without talking to each other.

    Example: ``take_part([a, b, c, d], 2, 3)`` -> ``[b]`` (a, b, c, d sorted by mask name).
    """
    if not 1 <= part <= parts:
        raise ValueError(f"part {part} is not within 1..{parts}")
    ordered = sorted(scans, key=mask_name_for)
    return ordered[part - 1 :: parts]


def _scans_below(folder: Path) -> list[Path]:
    # hidden: a half-written temporary left by a kill, or a file the user chose to hide
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and image_stem(p) is not None]
    stems = {image_stem(p) for p in files}
    scans = [p for p in files if f"{image_stem(p)}{CHANNEL_SUFFIX}" not in stems]
    for sub in (p for p in entries if p.is_dir()):
        scans.extend([sub] if is_dicom_series_folder(sub) else _scans_below(sub))
    return scans


def check_output_folder(out_dir: Path) -> None:
    """InputError if ``out_dir`` cannot become the output folder; nothing is created to find out.

    Example: ``check_output_folder(Path("notes.txt"))`` raises "output folder is a file, not a
    folder" when ``notes.txt`` is a file.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output folder is a file, not a folder")
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(existing, "is a file, not a folder: cannot create the output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(out_dir, f"output folder is not writable ({existing}: permission denied)")


def create_output_folder(out_dir: Path) -> list[Path]:
    """Create ``out_dir`` and its missing parents; return the folders created, outermost first.

    Example: ``create_output_folder(Path("new/masks"))`` -> ``[Path("new"), Path("new/masks")]``.
    """
    missing = [p for p in [out_dir, *out_dir.parents] if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            out_dir, f"output folder cannot be created ({exc.strerror or exc})"
        ) from None
    return list(reversed(missing))


def remove_empty_folders(created: list[Path]) -> None:
    """Remove the folders :func:`create_output_folder` made, innermost first, while empty.

    Example: ``remove_empty_folders(create_output_folder(out))`` leaves no trace of ``out``.
    """
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def all_or_none() -> Iterator[list[Path]]:
    """Collect the paths written inside the block; on any failure remove them again.

    Example: ``with all_or_none() as written: write_label(mask, path); written.append(path)``.
    """
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise


@dataclass(frozen=True)
class CaseOutputs:
    """Where one case's outputs go: the mask (named after the scan), its DICOM SEG, its preview
    and its JSON.

    Example: ``CaseOutputs.for_scan(Path("ct_0000.nii.gz"), Path("out"), False).mask`` ->
    ``Path("out/ct.nii.gz")``.
    """

    name: str
    mask: Path
    preview: Path
    case_json: Path
    seg: Path

    @classmethod
    def named(cls, scan: Path, out_dir: Path) -> CaseOutputs:
        """Where the outputs of ``scan`` go, nothing checked (see :mod:`edgepanc.runtime.outputs`).

        Example: ``CaseOutputs.named(Path("ct_0000.nii.gz"), Path("out")).case_json`` ->
        ``Path("out/ct.json")``.
        """
        name = mask_name_for(scan)
        stem = name[: -len(MASK_SUFFIX)]
        return cls(
            name,
            out_dir / name,
            out_dir / f"{stem}_preview.png",
            case_json_path(out_dir, name),
            out_dir / f"{stem}.seg.dcm",
        )

    @classmethod
    def for_scan(cls, scan: Path, out_dir: Path, overwrite: bool) -> CaseOutputs:
        """The outputs of ``scan``; InputError if its mask exists (without ``overwrite``) or
        would replace the scan itself."""
        outputs = cls.named(scan, out_dir)
        if outputs.mask.exists() and not overwrite:
            raise InputError(outputs.mask, "mask already exists; pass --overwrite to replace it")
        if outputs.mask.resolve() == scan.resolve():
            raise InputError(scan, "the mask would overwrite its own input; choose another --out")
        return outputs


__all__ = [
    "CHANNEL_SUFFIX",
    "IMAGE_SUFFIXES",
    "MASK_SUFFIX",
    "CaseOutputs",
    "all_or_none",
    "check_output_folder",
    "create_output_folder",
    "discover_scans",
    "image_stem",
    "mask_name_for",
    "remove_empty_folders",
    "take_part",
]
