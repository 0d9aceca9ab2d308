"""How a phantom, a synthetic data set and a model trained on one are known as such.

- A scan ``edgepanc synth`` writes carries :data:`PHANTOM_NOTE` in its header: ITK's
  ``ITK_FileNotes``, which is the NIfTI ``descrip`` field, a NRRD/MetaImage key, and (through
  :func:`edgepanc.io.volume.write_dicom_series`) a DICOM series' Image Comments (0020,4000).
  :func:`is_phantom_scan` reads only that header, never the voxels.
- A data set ``edgepanc synth`` writes has ``synth.json`` at its root with ``"synthetic": true``
  (:data:`SYNTH_MANIFEST`); :func:`dataset_provenance` is what training records about its data
  in the bundle (``provenance.data``).
- :func:`trained_on` reads that record back from a bundle's provenance (also through a
  quantized bundle's ``source_provenance``), so that ``edgepanc run`` can warn when a model
  trained on phantoms meets a scan that is not one: its masks mean nothing on real CT.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

PHANTOM_NOTE = "edgepanc synth phantom"
SYNTH_MANIFEST = "synth.json"
_HEADER_KEYS = ("ITK_FileNotes", "descrip", "0020|4000")


def mark_phantom(image: sitk.Image) -> sitk.Image:
    """Put :data:`PHANTOM_NOTE` into ``image``'s header (written by ``sitk.WriteImage``).

    Example: ``sitk.WriteImage(mark_phantom(phantom.image_sitk()), "quiz_001_0000.nii.gz")``.
    """
    image.SetMetaData("ITK_FileNotes", PHANTOM_NOTE)
    return image


def is_phantom_scan(scan: Path) -> bool:
    """Whether ``scan`` (an image file, or a DICOM series folder: its first file) carries
    :data:`PHANTOM_NOTE`; False for anything unreadable.

    Example: ``is_phantom_scan(Path("data/test/quiz_001_0000.nii.gz"))`` -> ``True`` for a scan
    ``edgepanc synth`` wrote.
    """
    path = scan
    if scan.is_dir():
        files = sorted(p for p in scan.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            return False
        path = files[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    keys = set(reader.GetMetaDataKeys())
    return any(key in keys and PHANTOM_NOTE in reader.GetMetaData(key) for key in _HEADER_KEYS)


def dataset_provenance(data: str | Path) -> dict[str, Any]:
    """What a bundle records about the data set it was trained on: its path, whether
    ``edgepanc synth`` made it (its ``synth.json`` says so) and, if so, the generator.

    Example: ``dataset_provenance("data")`` ->
    ``{"path": "/abs/data", "synthetic": True, "generator": "edgepanc 0.1.0", ...}``.
    """
    root = Path(data).absolute()
    record: dict[str, Any] = {"path": str(root), "synthetic": False}
    manifest = _read_manifest(root / SYNTH_MANIFEST)
    if manifest.get("synthetic") is True or str(manifest.get("generator", "")).startswith(
        "edgepanc"
    ):
        record.update(
            synthetic=True,
            generator=manifest.get("generator"),
            cases=len(cases) if isinstance(cases := manifest.get("cases"), list) else cases,
            seed=manifest.get("seed"),
        )
    return record


def trained_on(provenance: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``data`` record a bundle's provenance holds (a quantized bundle: its source's), else
    None for a bundle made before it was recorded.

    Example: ``trained_on(load_bundle("model").provenance)["synthetic"]`` -> ``True``.
    """
    seen: Mapping[str, Any] | None = provenance
    while isinstance(seen, Mapping):
        data = seen.get("data")
        if isinstance(data, Mapping) and isinstance(data.get("synthetic"), bool):
            return dict(data)
        seen = seen.get("source_provenance")
    return None


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


__all__ = [
    "PHANTOM_NOTE",
    "dataset_provenance",
    "is_phantom_scan",
    "mark_phantom",
    "trained_on",
]
