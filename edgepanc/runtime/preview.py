"""Pictures of a run: a case's preview and a folder run's ``overview.png``.

The preview shows three orthogonal slices through the lesion centre (else the pancreas) of the
volume the network saw (canonical LPS orientation, so the marks R/L, A/P, S/I are fixed), in an
abdominal window, with the kept pancreas and lesion overlaid, a legend and a title with the
case's name, volumes and subtype. It is what shows at a glance a "pancreas" in the pelvis that
a plausible volume hides. ``overview.png`` is one small row per case, made from the previews on
disk, so it also covers cases an earlier run (or another ``--part``) finished.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from edgepanc.io.atomic import atomic_path
from edgepanc.runtime.outputs import PNG_OWNER_KEY

# label colours (RGBA): pancreas green, lesion red; background transparent
_COLOURS = np.array([[0, 0, 0, 0], [0.1, 0.8, 0.2, 0.45], [0.95, 0.1, 0.1, 0.6]], dtype=np.float32)
# Abdominal soft-tissue window (width 400 HU, level 40 HU), the radiologists' default for the
# pancreas.
WINDOW_HU = (40.0 - 200.0, 40.0 + 200.0)
DPI = 150
# Which way each panel's edges point in the canonical LPS volume (top, bottom, left, right):
# axial rows run anterior -> posterior and columns patient right -> left (radiological view).
_MARKS = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}


def preview_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Centre of mass of the lesion, else of the pancreas, else the volume's centre (z, y, x).

    Example: ``preview_centre(np.zeros((4, 4, 4), np.uint8))`` -> ``(2, 2, 2)``.
    """
    for mask in (labels == 2, labels > 0):
        if mask.any():
            return tuple(int(round(c)) for c in ndimage.center_of_mass(mask))  # type: ignore[return-value]
    return tuple(n // 2 for n in labels.shape)  # type: ignore[return-value]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on an edge box
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class PreviewPanel:
    """One slice of a preview: its view, HU and label slices and the pixel aspect ratio."""

    view: str  # axial, coronal or sagittal
    hu: np.ndarray
    labels: np.ndarray
    aspect: float


def cut_panels(
    hu: np.ndarray, labels: np.ndarray, spacing_zyx: Sequence[float]
) -> list[PreviewPanel]:
    """The axial, coronal and sagittal slices through :func:`preview_centre`, copied, so that
    the volumes can go before the picture is drawn.

    ``spacing_zyx`` sets each panel's aspect ratio so anisotropic voxels are not drawn squashed.

    Example: ``[p.view for p in cut_panels(hu, labels, (2.5, 0.8, 0.8))]`` ->
    ``["axial", "coronal", "sagittal"]``.
    """
    z, y, x = centre = preview_centre(labels)
    return panels_through((hu[z], hu[:, y], hu[:, :, x]), labels, centre, spacing_zyx)


def panels_through(
    hu_planes: Sequence[np.ndarray],
    labels: np.ndarray,
    centre: Sequence[int],
    spacing_zyx: Sequence[float],
) -> list[PreviewPanel]:
    """The panels of the axial, coronal and sagittal ``hu_planes`` through ``centre`` with the
    slices of ``labels`` there (copies): what :func:`cut_panels` makes when only the three
    planes are at hand (the runtime resamples just those from the scan).

    Example: ``panels_through((ct[40], ct[:, 90], ct[:, :, 80]), labels, (40, 90, 80),
    (2.0, 1.2, 1.2))[1].view`` -> ``"coronal"``.
    """
    z, y, x = (int(c) for c in centre)
    sz, sy, sx = spacing_zyx
    axial, coronal, sagittal = (np.array(plane, copy=True) for plane in hu_planes)
    return [
        PreviewPanel("axial", axial, labels[z].copy(), sy / sx),
        PreviewPanel("coronal", coronal, labels[:, y].copy(), sz / sx),
        PreviewPanel("sagittal", sagittal, labels[:, :, x].copy(), sz / sy),
    ]


def save_preview(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing_zyx: Sequence[float],
    path: Path,
    title: str = "",
) -> Path:
    """Write a PNG: axial, coronal and sagittal slices of ``hu`` (Hounsfield units, canonical
    LPS (z, y, x) grid) with ``labels`` overlaid (see :func:`draw_preview`).

    Example: ``save_preview(hu, labels, (2.5, 0.8, 0.8), Path("out/ct_preview.png"), "ct")``.
    """
    return draw_preview(cut_panels(hu, labels, spacing_zyx), path, title)


def draw_preview(panels: Sequence[PreviewPanel], path: Path, title: str = "") -> Path:
    """Write ``panels`` as a PNG in the W400/L40 window with the labels overlaid, a legend,
    orientation marks and ``title``, at 150 dpi.

    Example: ``draw_preview(cut_panels(hu, labels, spacing), Path("out/ct_preview.png"), "ct")``.
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    for ax, panel in zip(axes, panels, strict=True):
        origin = "upper" if panel.view == "axial" else "lower"  # superior at the top
        low, high = WINDOW_HU
        shown = {"aspect": panel.aspect, "origin": origin}
        ax.imshow(panel.hu, cmap="gray", vmin=low, vmax=high, **shown)
        ax.imshow(_COLOURS[np.clip(panel.labels, 0, 2)], **shown)
        ax.set_title(panel.view)
        ax.axis("off")
        top, bottom, left, right = _MARKS[panel.view]
        style = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": ax.transAxes}
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    legend = [
        Patch(color=_COLOURS[1][:3], label="pancreas"),
        Patch(color=_COLOURS[2][:3], label="lesion"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=2, frameon=False)
    if title:
        fig.suptitle(title)
    fig.text(0.99, 0.01, "window W400/L40 HU", ha="right", va="bottom", fontsize=8, color="grey")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", metadata={PNG_OWNER_KEY: path.name})
    plt.close(fig)
    return path


def preview_title(name: str, statistics: Mapping[str, Any]) -> str:
    """The title of a case's picture: name, pancreas and lesion volumes, subtype.

    Example: ``preview_title("ct.nii.gz", {"pancreas_ml": 74.2, "lesion_ml": 0.0,
    "lesion_found": "false", "subtype": None})`` ->
    ``"ct.nii.gz   pancreas 74.2 ml   lesion none   subtype -"``.
    """
    pancreas = statistics.get("pancreas_ml")
    found = statistics.get("lesion_found") == "true"
    lesion = f"lesion {statistics.get('lesion_ml'):.1f} ml" if found else "lesion none"
    diameter = statistics.get("lesion_diameter_mm")
    if found and diameter is not None:
        lesion += f", {diameter:.1f} mm"
    subtype = statistics.get("subtype")
    named = "-" if subtype is None else str(subtype)
    if subtype is not None and (p := statistics.get(f"p_subtype{subtype}")) is not None:
        named += f" (p {p:.2f})"
    volume = "-" if pancreas is None else f"{pancreas:.1f} ml"
    return f"{name}   pancreas {volume}   {lesion}   subtype {named}"


def save_overview(path: Path, rows: Sequence[tuple[Mapping[str, Any], Path | None]]) -> Path:
    """Write ``overview.png``: per case (its statistics row and its preview PNG or None) one
    small row with the case's title over its preview shrunk to a third.

    Example: ``save_overview(Path("out/overview.png"), [(row, Path("out/ct_preview.png"))])``.
    """
    plt = _pyplot()
    height = 1.9
    fig, axes = plt.subplots(len(rows), 1, figsize=(5, height * max(len(rows), 1)), squeeze=False)
    for ax, (statistics, preview) in zip(axes[:, 0], rows, strict=True):
        ax.axis("off")
        ax.set_title(preview_title(str(statistics.get("name")), statistics), fontsize=8, loc="left")
        if preview is not None and preview.is_file():
            picture = plt.imread(str(preview))
            ax.imshow(picture[::3, ::3])
        else:
            ax.text(0.5, 0.5, "no preview", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={PNG_OWNER_KEY: path.name})
    plt.close(fig)
    return path
