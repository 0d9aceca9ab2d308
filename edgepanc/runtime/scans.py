"""Which scans a run reads, and where each one's outputs go.

A path is one scan (an image file or a DICOM series folder) or a folder searched for them; each
scan's mask is named after it (:func:`mask_name_for`), with its preview and case JSON beside it
(:class:`CaseOutputs`). Everything written for a case inside :func:`all_or_none` is removed again
when the case fails, so an output folder never holds a mask without its JSON.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgepanc.errors import InputError
from edgepanc.io.volume import is_dicom_series_folder
from edgepanc.runtime.report import case_json_path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
CHANNEL_SUFFIX = "_0000"
MASK_SUFFIX = ".nii.gz"


def _image_stem(path: Path) -> str | None:
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
    stem = None if scan.is_dir() else _image_stem(scan)
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


def _scans_below(folder: Path) -> list[Path]:
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.is_file() and _image_stem(p) is not None]
    stems = {_image_stem(p) for p in files}
    scans = [p for p in files if f"{_image_stem(p)}{CHANNEL_SUFFIX}" not in stems]
    for sub in (p for p in entries if p.is_dir() and not p.name.startswith(".")):
        scans.extend([sub] if is_dicom_series_folder(sub) else _scans_below(sub))
    return scans


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed; InputError if it is not a writable folder.

    Example: ``check_output_folder(Path("masks"))`` creates ``masks/`` or says why it cannot.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output folder is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".edgepanc_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            out_dir, f"output folder is not writable ({exc.strerror or exc})"
        ) from None


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
    """Where one case's outputs go: the mask (named after the scan), its preview and its JSON.

    Example: ``CaseOutputs.for_scan(Path("ct_0000.nii.gz"), Path("out"), False).mask`` ->
    ``Path("out/ct.nii.gz")``.
    """

    name: str
    mask: Path
    preview: Path
    case_json: Path

    @classmethod
    def for_scan(cls, scan: Path, out_dir: Path, overwrite: bool) -> CaseOutputs:
        """The outputs of ``scan``; InputError if its mask exists (without ``overwrite``) or
        would replace the scan itself."""
        name = mask_name_for(scan)
        mask = out_dir / name
        if mask.exists() and not overwrite:
            raise InputError(mask, "mask already exists; pass --overwrite to replace it")
        if mask.resolve() == scan.resolve():
            raise InputError(scan, "the mask would overwrite its own input; choose another --out")
        stem = name[: -len(MASK_SUFFIX)]
        return cls(name, mask, out_dir / f"{stem}_preview.png", case_json_path(out_dir, name))


__all__ = [
    "CHANNEL_SUFFIX",
    "IMAGE_SUFFIXES",
    "MASK_SUFFIX",
    "CaseOutputs",
    "all_or_none",
    "check_output_folder",
    "discover_scans",
    "mask_name_for",
]
