"""Overlay preview: three orthogonal slices through the lesion centre (else the pancreas)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from edgepanc.io.atomic import atomic_path

# label colours (RGBA): pancreas green, lesion red; background transparent
_COLOURS = np.array([[0, 0, 0, 0], [0.1, 0.8, 0.2, 0.45], [0.95, 0.1, 0.1, 0.6]], dtype=np.float32)


def preview_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Centre of mass of the lesion, else of the pancreas, else the volume's centre (z, y, x)."""
    for mask in (labels == 2, labels > 0):
        if mask.any():
            return tuple(int(round(c)) for c in ndimage.center_of_mass(mask))  # type: ignore[return-value]
    return tuple(n // 2 for n in labels.shape)  # type: ignore[return-value]


def save_preview(
    image: np.ndarray,
    labels: np.ndarray,
    spacing_zyx: Sequence[float],
    path: Path,
    title: str = "",
) -> Path:
    """Write a PNG: axial, coronal and sagittal slices of ``image`` with ``labels`` overlaid.

    ``image`` and ``labels`` share one (z, y, x) grid; ``spacing_zyx`` sets each panel's aspect
    ratio so anisotropic voxels are not drawn squashed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on an edge box
    import matplotlib.pyplot as plt

    z, y, x = preview_centre(labels)
    sz, sy, sx = spacing_zyx
    panels = [
        ("axial", image[z], labels[z], sy / sx),
        ("coronal", image[:, y], labels[:, y], sz / sx),
        ("sagittal", image[:, :, x], labels[:, :, x], sz / sy),
    ]
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, img, lbl, aspect) in zip(axes, panels, strict=True):
        origin = "upper" if name == "axial" else "lower"
        ax.imshow(img, cmap="gray", vmin=low, vmax=high, aspect=aspect, origin=origin)
        ax.imshow(_COLOURS[np.clip(lbl, 0, 2)], aspect=aspect, origin=origin)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
