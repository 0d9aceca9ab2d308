"""Which cases choose a run's model and which cases report its figures.

A run chooses twice: the best checkpoint (the validation with the highest combined score) and,
after ``head_refit``, whether the refitted head is kept. Choosing on the cases that then report
the figures flatters them (with 12 validation phantoms the chosen model scored 0.743 macro F1 there
and 0.632 on 48 fresh ones). With ``selection_share`` above 0 a stratified, seeded share of the
training cases is held out of training as *selection* cases: every validation scores them too,
and only their combined score chooses; the validation cases only report. Without selection
cases the refitted head is always kept (the validation cases never choose it) and the best
checkpoint is the validation's choice, which ``summary.json`` calls optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgepanc.training.kfold import SPLIT_SEED, stratified_folds

SELECTION_FILE = "selection.json"  # the held-out selection cases, written to the run folder
SELECTION_PREFIX = "selection_"  # the selection cases' metrics in a validated record


def hold_out_selection(
    cases: Sequence[Any], share: float, seed: int = SPLIT_SEED
) -> tuple[list[Any], list[Any], dict[str, Any] | None]:
    """Hold about ``share`` of the training cases (at least one) out of training, stratified by
    subtype and seeded, so the draw is the same on ``--resume``: the cases left (training and
    validation), the selection cases, and the record written to the run folder (None when
    ``share`` is 0).

    Example::

        >>> cases, selection, drawn = hold_out_selection(cases, 0.1)  # 88 training -> 79 + 9
        >>> len(selection), len(drawn["selection"])
        (9, 9)
    """
    if share <= 0:
        return list(cases), [], None
    train = [c for c in cases if c.split == "train"]
    if len(train) < 2:
        raise ValueError(
            f"selection_share {share}: {len(train)} training case(s) cannot spare selection cases"
        )
    folds = max(2, min(round(1 / share), len(train)))
    split = stratified_folds([c.case_id for c in train], [c.subtype for c in train], folds, seed)
    chosen = set(split[0]["validation"])
    record = {"share": share, "seed": seed, "stratified_by": "subtype", "selection": sorted(chosen)}
    kept = [c for c in cases if c.case_id not in chosen]
    return kept, [c for c in cases if c.case_id in chosen], record


def selection_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The selection cases' validation summary as prefixed keys of the record (flat, so that
    metrics.csv and the curves read them like any other column).

    Example: ``selection_metrics({"combined_score": 0.7, "n_cases": 9})`` ->
    ``{"selection_combined_score": 0.7, "selection_n_cases": 9}``.
    """
    keys = ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy", "combined_score", "n_cases")
    return {SELECTION_PREFIX + k: summary[k] for k in keys if k in summary}


def choosing_score(record: dict[str, Any]) -> float:
    """The score that chooses: the selection cases' when they were scored, else the
    validation cases'.

    Example: ``choosing_score({"combined_score": 0.8, "selection_combined_score": 0.6})`` -> 0.6.
    """
    return float(record.get(SELECTION_PREFIX + "combined_score", record["combined_score"]))


def who_chose(selection_cases: int, validation_cases: int) -> dict[str, Any]:
    """Which cases chose the model and which scored it, for ``summary.json`` and the log.

    Example: ``who_chose(0, 12)["honest"]`` -> ``False`` (the scoring cases also chose).
    """
    if selection_cases:
        chose = f"{selection_cases} selection cases held out of training"
    else:
        chose = f"the {validation_cases} validation cases (the figures they report are optimistic)"
    return {
        "chosen_on": chose,
        "scored_on": f"{validation_cases} validation cases",
        "selection_cases": selection_cases,
        "validation_cases": validation_cases,
        "honest": selection_cases > 0,
    }


__all__ = [
    "SELECTION_FILE",
    "choosing_score",
    "hold_out_selection",
    "selection_metrics",
    "who_chose",
]
