"""Ensembles (``edgepanc run`` on a folder with ``ensemble.json``): a predictor whose outputs
average the class probabilities of several member predictors on each tile.

Probabilities are averaged, not logits (as nnU-Net does): members trained apart need not agree
on the scale of their logits. The average is returned as its logarithm, so that the softmax
everything downstream applies gives back exactly the averaged probabilities. Members run one
after another on the same batch, so memory grows by one accumulator and each member's engine
buffers, not by a larger batch; time grows with the number of members.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgepanc.backends.base import Predictor, check_batch

# The floor of an averaged probability before its logarithm: log(0) would be -inf.
_TINY = np.float32(1e-12)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax of float32 ``logits`` along ``axis``, computed in place on a copy.

    Example: ``softmax(np.zeros((1, 3), np.float32))`` -> ``[[0.333, 0.333, 0.333]]``.
    """
    out = np.array(logits, dtype=np.float32, copy=True)
    out -= out.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


class EnsemblePredictor:
    """The mean of ``predictors``' class probabilities (segmentation and subtype), returned as
    log-probabilities in place of logits. All members must share a backend name (the memory
    planner counts that engine once per member).

    Example::

        >>> ensemble = EnsemblePredictor([fold0, fold1, fold2])  # three OpenVINO predictors
        >>> ensemble.members, ensemble.name
        (3, 'openvino')
        >>> seg, cls = ensemble(batch)                           # same shapes as fold0(batch)
    """

    def __init__(self, predictors: Sequence[Predictor]) -> None:
        if len(predictors) < 2:
            raise ValueError(f"an ensemble needs at least 2 predictors, got {len(predictors)}")
        names = {p.name for p in predictors}
        if len(names) > 1:
            raise ValueError(f"ensemble members must share a backend, got {sorted(names)}")
        self.predictors = list(predictors)
        first = self.predictors[0]
        self.name = first.name
        self.precision = first.precision
        self.device = first.device
        self.artifact = getattr(first, "artifact", None)

    @property
    def members(self) -> int:
        """Predictor calls per batch: one per member."""
        return len(self.predictors)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = check_batch(batch)
        seg_sum: np.ndarray | None = None
        cls_sum: np.ndarray | None = None
        for predictor in self.predictors:
            seg, cls = predictor(batch)
            if seg_sum is None or cls_sum is None:
                seg_sum, cls_sum = softmax(seg), softmax(cls)
            else:
                seg_sum += softmax(seg)
                cls_sum += softmax(cls)
        assert seg_sum is not None and cls_sum is not None  # at least two members
        scale = np.float32(1.0 / self.members)
        return _log_mean(seg_sum, scale), _log_mean(cls_sum, scale)


def _log_mean(total: np.ndarray, scale: np.float32) -> np.ndarray:
    total *= scale
    np.maximum(total, _TINY, out=total)
    return np.log(total, out=total)


__all__ = ["EnsemblePredictor", "softmax"]
