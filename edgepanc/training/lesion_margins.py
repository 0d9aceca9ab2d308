"""Choosing the lesion margin of each subtype on the cases that choose the model.

After training, the best weights segment the choosing cases (the held-out selection cases when
the run has them, else the validation cases, as for the best checkpoint) once: in the validation
that made them the best, when that validation was asked to (the trainer asks the validations
whose weights can end as the bundle's), else in a pass of their own. Each case is then
finished with every candidate margin (:data:`~edgepanc.postprocessing.lesion_margin.MARGIN_CANDIDATES_MM`)
and scored on its original grid as ``edgepanc evaluate`` would. For each predicted subtype the
margin with the highest mean lesion Dice over the cases predicted as that subtype is kept (the
smaller on a tie; 0 for a subtype predicted on fewer than :data:`MIN_CASES` cases), and the
bundle records the margins (``lesion_margins_mm``) with what they gained. The subtype is read
before the lesion grows, so the margins move the lesion Dice alone; whole-pancreas Dice and the
subtype do not change.

Example::

    >>> choice = choose_margins(dice, [0, 2, 2, 1], subtypes=3)  # dice: [cases, candidates]
    >>> choice.margins_mm
    (0.0, 0.0, 2.5)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepanc.postprocessing.lesion_margin import MARGIN_CANDIDATES_MM

log = logging.getLogger("edgepanc.train")

MIN_CASES = 3  # fewer cases of a predicted subtype than this say too little to grow its lesions


@dataclass(frozen=True)
class MarginChoice:
    """The chosen margin (mm) per subtype and the choosing cases' mean lesion Dice without and
    with them; ``cases[s]``: how many choosing cases were predicted as subtype ``s``;
    ``curves[s][j]``: their mean lesion Dice with margin ``candidates_mm[j]`` (empty without
    cases), so that a person can see how sharp the choice was.

    Example: ``MarginChoice((0.0, 0.0, 2.5), (4, 5, 3), 0.41, 0.45).gain`` -> ``0.04`` (about).
    """

    margins_mm: tuple[float, ...]
    cases: tuple[int, ...]
    lesion_dsc_without: float
    lesion_dsc_with: float
    candidates_mm: tuple[float, ...] = MARGIN_CANDIDATES_MM
    curves: tuple[tuple[float, ...], ...] = ()

    @property
    def gain(self) -> float:
        """What the margins added to the choosing cases' mean lesion Dice."""
        return self.lesion_dsc_with - self.lesion_dsc_without

    def to_dict(self) -> dict[str, Any]:
        """The record kept in the bundle's metrics."""
        record = asdict(self)
        for key in ("margins_mm", "cases", "candidates_mm"):
            record[key] = list(record[key])
        record["curves"] = [[round(d, 4) for d in curve] for curve in self.curves]
        return record

    def line(self, source: str) -> str:
        """One log line, e.g. ``lesion margins chosen on 36 validation cases: ...``."""
        each = ", ".join(
            f"subtype {s} {m:g} mm ({n} cases)"
            for s, (m, n) in enumerate(zip(self.margins_mm, self.cases, strict=True))
        )
        return (
            f"lesion margins chosen on {sum(self.cases)} {source} cases: {each}; their lesion "
            f"Dice {self.lesion_dsc_without:.4f} -> {self.lesion_dsc_with:.4f}"
        )


def choose_margins(
    dice: np.ndarray,
    predicted: Sequence[int],
    subtypes: int,
    candidates: Sequence[float] = MARGIN_CANDIDATES_MM,
    min_cases: int = MIN_CASES,
) -> MarginChoice:
    """The margin per predicted subtype that maximises the mean lesion Dice of its cases.

    ``dice[i, j]``: case ``i``'s lesion Dice finished with margin ``candidates[j]``
    (``candidates[0]`` must be 0, the case as it is); ``predicted[i]``: its predicted subtype.

    Example: two cases predicted subtype 2 whose Dice rises from 0.4 to 0.6 at 2.5 mm ->
    ``choose_margins(dice, [2, 2, 2], 3).margins_mm[2]`` -> ``2.5``.
    """
    dice = np.asarray(dice, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if candidates[0] != 0 or dice.shape != (len(predicted), len(candidates)):
        raise ValueError("dice must be [cases, candidates] with candidates[0] == 0 (no margin)")
    margins, counts, curves = [], [], []
    chosen = np.zeros(len(predicted), dtype=np.int64)
    for subtype in range(subtypes):
        rows = predicted == subtype
        counts.append(int(rows.sum()))
        curve = dice[rows].mean(axis=0) if counts[-1] else np.zeros(0)
        curves.append(tuple(float(d) for d in curve))
        best = int(np.argmax(curve)) if counts[-1] >= min_cases else 0
        margins.append(float(candidates[best]))  # argmax takes the first, the smaller, on ties
        chosen[rows] = best
    with_margins = dice[np.arange(len(predicted)), chosen]
    return MarginChoice(
        tuple(margins),
        tuple(counts),
        float(dice[:, 0].mean()) if len(dice) else 0.0,
        float(with_margins.mean()) if len(dice) else 0.0,
        tuple(float(c) for c in candidates),
        tuple(curves),
    )


def margin_trials(
    predictor: Any,
    cases: Sequence[Any],
    patch_size: Sequence[int],
    step_fraction: float = 0.5,
    candidates: Sequence[float] = MARGIN_CANDIDATES_MM,
) -> tuple[np.ndarray, list[int]]:
    """Segment each prepared case once through ``predictor`` and score it finished with every
    candidate margin: the ``[cases, candidates]`` lesion Dice and the predicted subtypes.

    Example: ``dice, predicted = margin_trials(predictor, val_cases, (64, 96, 96))``.
    """
    from tqdm import tqdm

    from edgepanc.training.validation import validate_with

    if not cases:
        return np.zeros((0, len(candidates))), []
    bar = tqdm(cases, desc="lesion margins", unit="case", leave=False)
    results = validate_with(predictor, bar, patch_size, step_fraction, candidates)
    return trials_from_results(results)


def trials_from_results(results: Sequence[Any]) -> tuple[np.ndarray, list[int]]:
    """The ``[cases, candidates]`` lesion Dice and predicted subtypes of validation results
    that scored the margin candidates
    (:func:`~edgepanc.training.validation.validate_cases` with ``margin_candidates``).

    Example: ``dice, predicted = trials_from_results(results)``.
    """
    if any(not r.margin_lesion_dsc for r in results):
        raise ValueError("these validation results did not score the lesion-margin candidates")
    dice = np.array([r.margin_lesion_dsc for r in results], dtype=np.float64)
    return dice.reshape(len(results), -1), [int(r.predicted_subtype) for r in results]


def choose_run_lesion_margins(
    run_dir: Path,
    cases: Sequence[Any],
    source: str,
    device: str,
    precision: str,
    step_fraction: float = 0.5,
) -> MarginChoice | None:
    """Choose the margins of the bundle in ``run_dir`` (its best weights) on ``cases`` and write
    them into its ``model.json``, with the choice under ``metrics["lesion_margins"]``. Nothing
    happens (None) without cases or for a bundle without a subtype head.

    Example: ``choose_run_lesion_margins(Path("model"), val_cases, "validation", "cpu", "bf16")``.
    """
    from edgepanc.backends.torch_backend import TorchPredictor
    from edgepanc.bundle import load_bundle

    bundle = load_bundle(run_dir)
    if not cases or not bundle.classifier:
        return None
    predictor = TorchPredictor(bundle.load_network(device), device=device, precision=precision)
    dice, predicted = margin_trials(predictor, cases, bundle.plan.patch_size, step_fraction)
    return record_margin_choice(run_dir, dice, predicted, source)


def record_margin_choice(
    run_dir: Path, dice: np.ndarray, predicted: Sequence[int], source: str
) -> MarginChoice | None:
    """Choose the margins from trials of the best weights of the bundle in ``run_dir`` and write
    them into its ``model.json`` (None for a bundle without a subtype head).

    Example: ``record_margin_choice(Path("model"), dice, predicted, "validation")``.
    """
    from edgepanc.bundle import load_bundle, save_bundle_metadata

    bundle = load_bundle(run_dir)
    if not bundle.classifier:
        return None
    choice = choose_margins(dice, predicted, len(bundle.subtypes))
    bundle.lesion_margins_mm = choice.margins_mm
    bundle.metrics = {**bundle.metrics, "lesion_margins": {**choice.to_dict(), "chosen_on": source}}
    save_bundle_metadata(bundle)
    log.info(choice.line(source))
    return choice


def choose_trainer_margins(trainer: Any) -> MarginChoice | None:
    """The margins of a finished :class:`~edgepanc.training.loop.Trainer`'s bundle, chosen on
    the cases that chose its weights (the selection cases, else the validation cases); None
    without a bundle or such cases.

    Example: ``choose_trainer_margins(trainer)`` after ``trainer``'s last epoch and refit.
    """
    from edgepanc.bundle import METADATA_FILE
    from edgepanc.training.validation import validation_precision

    if trainer.select_cases:
        cases, source = trainer.select_cases, "selection"
    else:
        cases, source = trainer.val_cases, "validation"
    if not cases or not (trainer.run_dir / METADATA_FILE).is_file():
        return None
    if trainer.validation.best_margin_trials is not None:
        # The validation that made these weights the best also scored every margin.
        dice, predicted = trainer.validation.best_margin_trials
        return record_margin_choice(trainer.run_dir, dice, predicted, source)
    return choose_run_lesion_margins(
        trainer.run_dir,
        cases,
        source,
        trainer.device.type,
        validation_precision(trainer.amp_dtype),
        trainer.config.val_step_fraction,
    )


__all__ = [
    "MIN_CASES",
    "MarginChoice",
    "choose_margins",
    "choose_run_lesion_margins",
    "choose_trainer_margins",
    "margin_trials",
    "record_margin_choice",
    "trials_from_results",
]
