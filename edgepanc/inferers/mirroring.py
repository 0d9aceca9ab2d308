"""Test-time mirroring (``edgepanc run --tta``): a predictor whose outputs are the mean over
mirrored copies of each tile.

Training flips patches along y and x (never z: the anatomy is ordered head to foot), so only
those mirrors show the network what it learned to see; nnU-Net's default also mirrors z, which
moved its averaged masks away from this network's own (bench/RESULTS.md). Each mirrored copy is
one more call of the wrapped predictor with the same batch, so memory grows by one accumulator,
not by a larger batch, and the time by the number of passes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from edgepanc.backends.base import Predictor, check_batch

# Array axes of a batch [B, 1, D, H, W] by name: D is z, H is y, W is x.
AXIS_OF = {"z": 2, "y": 3, "x": 4}
TRAINED_MIRRORS = ("y", "x")  # the axes training flips (edgepanc.training.augmentation)


class MirroredPredictor:
    """``predictor`` averaged over every combination of mirrors along ``axes`` (``("y", "x")``:
    four passes: as is, y, x, both). Segmentation logits are mirrored back before averaging;
    subtype logits are averaged as they are.

    Example::

        >>> mirrored = MirroredPredictor(predictor)          # the ONNX Runtime one, say
        >>> mirrored.passes, mirrored.name == predictor.name
        (4, True)
        >>> seg, cls = mirrored(batch)                       # same shapes as predictor(batch)
    """

    def __init__(self, predictor: Predictor, axes: Sequence[str] = TRAINED_MIRRORS) -> None:
        unknown = sorted(set(axes) - set(AXIS_OF))
        if unknown or not axes:
            raise ValueError(f"mirror axes must be some of {sorted(AXIS_OF)}, got {list(axes)}")
        self.predictor = predictor
        self.axes = tuple(dict.fromkeys(axes))
        self.name = predictor.name
        self.precision = predictor.precision
        self.device = predictor.device
        array_axes = [AXIS_OF[a] for a in self.axes]
        self.flips = [
            combo
            for n in range(len(array_axes) + 1)
            for combo in itertools.combinations(array_axes, n)
        ]

    @property
    def passes(self) -> int:
        """Predictor calls per batch: one per combination of mirrors, the plain one included."""
        return len(self.flips)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = check_batch(batch)
        seg_sum: np.ndarray | None = None
        cls_sum: np.ndarray | None = None
        for flip in self.flips:
            tile = np.ascontiguousarray(np.flip(batch, flip)) if flip else batch
            seg, cls = self.predictor(tile)
            seg = np.flip(seg, flip) if flip else seg
            if seg_sum is None or cls_sum is None:
                seg_sum = np.array(seg, dtype=np.float32, order="C")
                cls_sum = np.array(cls, dtype=np.float32, order="C")
            else:
                seg_sum += seg
                cls_sum += cls
        assert seg_sum is not None and cls_sum is not None  # flips always holds the plain pass
        scale = np.float32(1.0 / self.passes)
        return seg_sum * scale, cls_sum * scale


__all__ = ["AXIS_OF", "TRAINED_MIRRORS", "MirroredPredictor"]
