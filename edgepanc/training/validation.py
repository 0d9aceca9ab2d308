"""Validation exactly as ``edgepanc run`` + ``edgepanc evaluate`` would score the model.

Each whole validation volume (preprocessed once, kept in memory) goes through the runtime's
sliding-window inference with a :class:`~edgepanc.backends.torch_backend.TorchPredictor` (fp32,
or the autocast precision the run trains with: :func:`validation_precision`), then through the
runtime's own finishing step on the preprocessed grid
(:func:`~edgepanc.postprocessing.finish_prediction`: post-processing, the soft maps under the kept
masks, the subtype weighted by the lesion it kept), and the label map is mapped back onto the
ORIGINAL image grid with ``restore_label`` (interpolating the network's soft maps, as the
runtime does) and compared there with the original reference mask through :mod:`edgepanc.metrics`.
Mapping back costs a resample of the labels' box per case (milliseconds at quiz size) and makes
the numbers the ones ``evaluate`` reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from edgepanc.backends.base import Predictor
from edgepanc.inferers.sliding_window import SlidingWindowResult, sliding_window_inference
from edgepanc.postprocessing import DEFAULT_POSTPROCESS, FinishedPrediction, finish_prediction
from edgepanc.training.dataset import PreparedCase


@dataclass(frozen=True)
class CaseResult:
    """One validated case (plain data, so it travels through all_gather_object)."""

    case_id: str
    whole_dsc: float
    lesion_dsc: float
    subtype: int | None
    predicted_subtype: int
    probabilities: list[float]
    # Lesion Dice finished with each lesion-margin candidate, when the validation was asked for
    # them (edgepanc.training.lesion_margins); empty otherwise.
    margin_lesion_dsc: tuple[float, ...] = ()


# Tiles per forward pass in validation: with two or more, PyTorch's CPU convolutions take the
# oneDNN path (a batch of one sends small 3D convolutions to a far slower fallback).
VALIDATION_TILE_BATCH = 2


def validation_precision(amp_dtype: torch.dtype | None) -> str:
    """The :class:`~edgepanc.backends.torch_backend.TorchPredictor` precision that validates a
    run trained under ``amp_dtype`` autocast: the same one, so that validating costs what a
    training step does per voxel (bf16 on a CPU with AMX about halves it) and the weights are
    scored at the precision ``edgepanc run`` picks there (OpenVINO bf16); fp32 without autocast.

    Example: ``validation_precision(torch.bfloat16)`` -> ``"bf16"``.
    """
    from edgepanc.backends.torch_backend import AUTOCAST_DTYPES

    for name, dtype in AUTOCAST_DTYPES.items():
        if dtype == amp_dtype:
            return name
    raise ValueError(f"no validation precision for autocast dtype {amp_dtype}")


def predict_case(
    model: torch.nn.Module,
    case: PreparedCase,
    patch_size: Sequence[int],
    device: str,
    step_fraction: float = 0.5,
    postprocess: bool = True,
    precision: str = "fp32",
) -> FinishedPrediction:
    """:func:`predict_with` through a PyTorch predictor of ``model`` (``precision``: ``"fp32"``,
    or ``"bf16"`` / ``"fp16"`` autocast).

    Example: ``predict_case(model, case, (64, 96, 96), "cpu").labels.shape == case.image.shape``.
    """
    from edgepanc.backends.torch_backend import TorchPredictor

    predictor = TorchPredictor(model, device=device, precision=precision)
    return predict_with(predictor, case.image, case.spacing, patch_size, step_fraction, postprocess)


def predict_with(
    predictor: Predictor,
    image: np.ndarray,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
    postprocess: bool = True,
) -> FinishedPrediction:
    """The runtime's tiling, stitching and finishing step for one preprocessed volume, through
    any backend (``postprocess`` False keeps the network's raw labels).

    Example: ``predict_with(predictor, case.image, case.spacing, (64, 96, 96)).subtype`` -> ``0``.
    """
    result = infer_volume(predictor, image, patch_size, step_fraction)
    return finish_prediction(result, spacing, DEFAULT_POSTPROCESS if postprocess else None)


def infer_volume(
    predictor: Predictor,
    image: np.ndarray,
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
) -> SlidingWindowResult:
    """The runtime's tiling and stitching of one preprocessed volume at validation's tile batch,
    with the soft maps the finishing step needs.

    Example: ``finish_prediction(infer_volume(predictor, case.image, (64, 96, 96)), case.spacing)``.
    """
    return sliding_window_inference(
        image,
        predictor,
        patch_size,
        step_fraction=step_fraction,
        tile_batch=VALIDATION_TILE_BATCH,
        keep_probabilities=True,
    )


def score_case(case: PreparedCase, prediction: FinishedPrediction) -> CaseResult:
    """Compare with the reference on the original grid (the preprocessed one if none is known).

    Example: ``score_case(case, predict_case(model, case, (64, 96, 96), "cpu")).whole_dsc``.
    """
    from edgepanc.metrics import segmentation_metrics

    labels, probabilities = prediction.labels, prediction.subtype_probabilities
    if case.label_path is not None:
        from edgepanc.io.volume import read_label
        from edgepanc.preprocessing import restore_label

        reference = sitk.GetArrayFromImage(read_label(case.label_path))
        restored = restore_label(labels, case.grid, prediction.region_probabilities)
        predicted = sitk.GetArrayFromImage(restored)
    else:
        reference, predicted = case.label, labels
    seg = segmentation_metrics(predicted, reference)
    return CaseResult(
        case_id=case.case_id,
        whole_dsc=float(seg["whole_dsc"]),
        lesion_dsc=float(seg["lesion_dsc"]),
        subtype=case.subtype,
        predicted_subtype=prediction.subtype,
        probabilities=[float(p) for p in probabilities],
    )


def validate_cases(
    model: torch.nn.Module,
    cases: Sequence[PreparedCase],
    patch_size: Sequence[int],
    device: str,
    step_fraction: float = 0.5,
    precision: str = "fp32",
    margin_candidates: Sequence[float] = (),
) -> list[CaseResult]:
    """Validate ``cases`` (this rank's share) with ``model`` in eval mode, at ``precision``
    (see :func:`validation_precision`); with ``margin_candidates`` each case is also finished
    with every lesion margin among them (:func:`margin_lesion_dsc`), from the same network pass.

    Example: ``validate_cases(model, val_cases, (64, 96, 96), "cpu")[0].predicted_subtype``.
    """
    from edgepanc.backends.torch_backend import TorchPredictor

    was_training = model.training
    model.eval()
    try:
        predictor = TorchPredictor(model, device=device, precision=precision)
        return validate_with(predictor, cases, patch_size, step_fraction, margin_candidates)
    finally:
        model.train(was_training)


def validate_with(
    predictor: Predictor,
    cases: Iterable[PreparedCase],
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
    margin_candidates: Sequence[float] = (),
) -> list[CaseResult]:
    """Score ``cases`` through any backend's ``predictor``: one network pass per case, finished
    as the runtime finishes it, and with ``margin_candidates`` once more per lesion margin.

    Example: ``validate_with(predictor, val_cases, (64, 96, 96))[0].whole_dsc`` -> ``0.91``.
    """
    results = []
    for case in cases:
        result = infer_volume(predictor, case.image, patch_size, step_fraction)
        scored = score_case(case, finish_prediction(result, case.spacing, DEFAULT_POSTPROCESS))
        if margin_candidates:
            dice = margin_lesion_dsc(result, case, margin_candidates, scored.lesion_dsc)
            scored = replace(scored, margin_lesion_dsc=dice)
        results.append(scored)
    return results


def margin_lesion_dsc(
    result: SlidingWindowResult,
    case: PreparedCase,
    candidates: Sequence[float],
    unmargined: float | None = None,
) -> tuple[float, ...]:
    """Case ``case``'s lesion Dice with ``result`` finished with each margin in ``candidates``
    (the same margin for every subtype); ``unmargined``, the Dice already scored without a
    margin, stands in for a candidate of 0.

    Example: ``margin_lesion_dsc(infer_volume(predictor, case.image, patch), case, (0, 1.5))``
    -> ``(0.41, 0.47)``.
    """
    subtypes = np.asarray(result.tile_cls_logits).shape[-1]
    dice = []
    for margin in candidates:
        if margin == 0 and unmargined is not None:
            dice.append(float(unmargined))
            continue
        finished = finish_prediction(
            result, case.spacing, DEFAULT_POSTPROCESS, (float(margin),) * subtypes
        )
        dice.append(score_case(case, finished).lesion_dsc)
    return tuple(dice)


def summarize_results(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Every validation metric (see :func:`edgepanc.metrics.summarize_cases`) plus the score.

    Cases without a subtype label count for segmentation only.

    Example: ``summarize_results(validate_cases(model, cases, (64, 96, 96), "cpu"))
    ["combined_score"]``.
    """
    from edgepanc.metrics import combined_score, summarize_cases

    ordered = sorted(results, key=lambda r: r.case_id)  # rank-independent order
    per_case = [{"whole_dsc": r.whole_dsc, "lesion_dsc": r.lesion_dsc} for r in ordered]
    labelled = [r for r in ordered if r.subtype is not None]
    summary = dict(
        summarize_cases(
            per_case,
            [int(r.subtype) for r in labelled],  # type: ignore[arg-type]
            [r.predicted_subtype for r in labelled],
        )
    )
    summary["combined_score"] = float(combined_score(summary))
    return summary
