"""A DICOM Segmentation (SEG) of a case, for a PACS, OHIF or a DICOM-reading Slicer.

The SEG references the source series and holds one frame per source slice on that slice's
geometry (highdicom copies position, orientation and spacing from each source image), with the
segments ``pancreas`` (label 1) and ``lesion`` (label 2) named and coded in SNOMED CT. highdicom
(and pydicom) are imported only here, when a SEG is written; neither imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from edgepanc.errors import InputError
from edgepanc.io.atomic import atomic_path
from edgepanc.runtime.outputs import SEG_MANUFACTURER
from edgepanc.version import __version__

SEG_LABELS = {1: "pancreas", 2: "lesion"}


def read_source_series(folder: Path) -> list[Any]:
    """The pydicom datasets of the image series in ``folder`` (pixel data not decoded).

    Example: ``len(read_source_series(Path("ct_series")))`` -> ``120``.
    """
    import pydicom

    datasets = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in ds and "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise InputError(folder, "no DICOM images to reference in a DICOM SEG")
    if any("FrameOfReferenceUID" not in ds for ds in datasets):
        raise InputError(folder, "has no Frame of Reference UID, which a DICOM SEG needs")
    return datasets


def frames_for_sources(labels: sitk.Image, sources: list[Any], folder: Path) -> np.ndarray:
    """The label slice of each source image, in the sources' order: each slice found by the
    source's Image Position (Patient) on the label image's grid (that of the series).

    Example: ``frames_for_sources(mask, read_source_series(folder), folder).shape`` ->
    ``(120, 512, 512)``.
    """
    array = sitk.GetArrayViewFromImage(labels)
    frames = []
    for ds in sources:
        position = tuple(float(v) for v in ds.ImagePositionPatient)
        index = labels.TransformPhysicalPointToContinuousIndex(position)
        k = round(index[2])
        if max(abs(index[0]), abs(index[1]), abs(index[2] - k)) > 1e-3 or not (
            0 <= k < array.shape[0] and array.shape[1:] == (ds.Rows, ds.Columns)
        ):
            raise InputError(
                folder, f"{ds.filename}: its slice is not on the mask's grid; no DICOM SEG written"
            )
        frames.append(np.asarray(array[k], dtype=np.uint8))
    return np.stack(frames)


def _segment_descriptions(hd: Any) -> list[Any]:
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="edgepanc", family=codes.DCM.ArtificialIntelligence, version=__version__
    )
    kinds = {
        1: (codes.SCT.AnatomicalStructure, codes.SCT.Pancreas),
        2: (
            hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
            codes.SCT.Lesion,
        ),
    }
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=kinds[number][0],
            segmented_property_type=kinds[number][1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, label in SEG_LABELS.items()
    ]


def write_dicom_seg(labels: sitk.Image, folder: Path, path: Path) -> Path:
    """Write ``labels`` (the mask on the grid of the DICOM series in ``folder``) as a binary
    DICOM SEG at ``path`` (atomically), referencing that series.

    Example: ``write_dicom_seg(mask, Path("ct_series"), Path("out/ct_series.seg.dcm"))``.
    """
    import highdicom as hd

    sources = read_source_series(folder)
    frames = frames_for_sources(labels, sources, folder)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(hd),
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,  # how a rerun knows the file as its own
        manufacturer_model_name="edgepanc",
        software_versions=__version__,
        device_serial_number="none",
        series_description="edgepanc pancreas and lesion",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


__all__ = ["SEG_LABELS", "frames_for_sources", "read_source_series", "write_dicom_seg"]
