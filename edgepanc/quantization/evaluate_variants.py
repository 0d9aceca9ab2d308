"""Validation accuracy of a compressed variant, scored exactly as training scores the fp32 model.

Each validation case goes through the runtime's sliding-window inference with the variant's
predictor (torch, ONNX Runtime or TensorRT), the runtime's post-processing, and is scored on the
original image grid by :func:`edgepanc.training.validation.score_case`; the summary is
:func:`edgepanc.training.validation.summarize_results`. Only the predictor differs from
:func:`edgepanc.training.validation.predict_case`, which builds its own torch predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgepanc.backends.base import Predictor
from edgepanc.quantization.config import SUBTYPES_BY_CASE
from edgepanc.training.validation import predict_with, score_case, summarize_results

# The metrics a variant is judged on against fp32 (see AccuracyTolerance).
KEY_METRICS: tuple[str, ...] = ("whole_dsc", "lesion_dsc", "macro_f1")


def evaluate_predictor(
    predictor: Predictor,
    cases: Sequence[Any],
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
) -> dict[str, Any]:
    """Every validation metric of ``predictor`` on prepared ``cases``
    (edgepanc.training.dataset.PreparedCase), and the subtype it names per case
    (:data:`~edgepanc.quantization.config.SUBTYPES_BY_CASE`)."""
    results = []
    for case in cases:
        prediction = predict_with(predictor, case.image, case.spacing, patch_size, step_fraction)
        results.append(score_case(case, prediction))
    summary = summarize_results(results)
    # Which cases a variant names differently from fp32 (AccuracyTolerance.changed_subtypes).
    summary[SUBTYPES_BY_CASE] = {r.case_id: int(r.predicted_subtype) for r in results}
    return summary


def accuracy_loss(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, float]:
    """fp32 minus variant for each key metric (positive: the variant is worse)."""
    return {name: float(reference[name]) - float(candidate[name]) for name in KEY_METRICS}
