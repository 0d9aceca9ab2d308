"""Imperfect reference masks for the subtype head's teacher forcing.

Under teacher forcing the head pools under the reference lesion mask, which is exact; at run time
it pools under the predicted one, which on an unseen case is off by a voxel or two at the margin
or misplaced (lesion Dice 0.3-0.8 on the validation phantoms). A head trained on exact masks
named 11 of 12 validation subtypes under the reference mask and 7 under its own prediction on the
same lesion-centred patches (scripts/subtype_diagnosis.py). Shifting, growing and shrinking the
reference lesion by a voxel or two shows the head the margins it will really get. It is off by
default: one measured run gained nothing in macro F1 (docs/measurements/cpu_recipe.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgepanc.networks.config import LESION_LABEL, PANCREAS_LABEL


def draw_lesion_jitter(
    rng: np.random.Generator, batch: int, max_voxels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: a shift [B, 3] in -max..max voxels per axis, and a radius [B] in -1..max
    (negative: erode by one voxel; 0: unchanged; positive: dilate by that many voxels)."""
    shifts = rng.integers(-max_voxels, max_voxels + 1, size=(batch, 3))
    radii = rng.integers(-1, max_voxels + 1, size=batch)
    return shifts, radii


def jitter_lesion(label: torch.Tensor, shifts: np.ndarray, radii: np.ndarray) -> torch.Tensor:
    """``label`` [B, D, H, W] with each sample's lesion shifted by ``shifts[b]`` voxels and then
    dilated (``radii[b] > 0``) or eroded by one voxel (``radii[b] < 0``).

    Lesion voxels the change removes become pancreas; voxels it adds become lesion wherever they
    lie. An erosion that would remove the whole lesion is skipped, so a forced sample never loses
    its lesion.
    """
    out = label.clone()
    for b in range(label.shape[0]):
        lesion = (label[b] == LESION_LABEL).float()[None, None]
        if not bool(lesion.any()):
            continue
        moved = torch.roll(lesion, shifts=[int(s) for s in shifts[b]], dims=(2, 3, 4))
        radius = int(radii[b])
        if radius > 0:
            moved = F.max_pool3d(moved, 2 * radius + 1, stride=1, padding=radius)
        elif radius < 0:
            eroded = -F.max_pool3d(-moved, 3, stride=1, padding=1)
            moved = eroded if bool(eroded.any()) else moved
        new = moved[0, 0] > 0.5
        sample = out[b]
        sample[(sample == LESION_LABEL) & ~new] = PANCREAS_LABEL
        sample[new] = LESION_LABEL
    return out


__all__ = ["draw_lesion_jitter", "jitter_lesion"]
