"""K-fold cross-validation splits, stratified by subtype, over the train and validation cases."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np


def stratified_folds(
    case_ids: Sequence[str], subtypes: Sequence[int | None], folds: int, seed: int = 0
) -> list[dict[str, list[str]]]:
    """``folds`` splits ``{"train": [...], "validation": [...]}``; each case validates once.

    Within each subtype the cases are shuffled with ``seed`` and dealt round-robin, continuing
    the deal across subtypes so fold sizes differ by at most one.
    """
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    if len(case_ids) < folds:
        raise ValueError(f"{len(case_ids)} cases cannot fill {folds} folds")
    by_subtype: dict[int, list[str]] = defaultdict(list)
    for case_id, subtype in zip(case_ids, subtypes, strict=True):
        by_subtype[-1 if subtype is None else int(subtype)].append(case_id)
    rng = np.random.default_rng(seed)
    assignment: dict[str, int] = {}
    position = 0
    for subtype in sorted(by_subtype):
        members = sorted(by_subtype[subtype])
        for index in rng.permutation(len(members)):
            assignment[members[index]] = position % folds
            position += 1
    ordered = list(case_ids)
    return [
        {
            "train": [c for c in ordered if assignment[c] != fold],
            "validation": [c for c in ordered if assignment[c] == fold],
        }
        for fold in range(folds)
    ]


def summarize_folds(fold_metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over folds of every scalar metric."""
    keys = [k for k, v in fold_metrics[0].items() if isinstance(v, int | float)]
    summary: dict[str, Any] = {"folds": len(fold_metrics), "per_fold": list(fold_metrics)}
    for key in keys:
        values = np.array([m[key] for m in fold_metrics if key in m], dtype=np.float64)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
    return summary


# nnU-Net draws its splits with this fixed seed, so that runs with different training seeds
# validate on the same cases and their scores compare.
SPLIT_SEED = 12345
VALIDATION_SHARE = 0.2


def validation_split(
    case_ids: Sequence[str], subtypes: Sequence[int | None], seed: int = SPLIT_SEED
) -> dict[str, list[str]]:
    """About :data:`VALIDATION_SHARE` of the cases (at least one) held out for validation,
    stratified by subtype (unknown subtypes form their own stratum), seeded.

    Example::

        >>> split = validation_split(["a", "b", "c", "d", "e"], [0, 0, 1, 1, None])
        >>> len(split["validation"]), len(split["train"])
        (1, 4)
    """
    if len(case_ids) < 2:
        raise ValueError(f"{len(case_ids)} case(s) cannot be split into training and validation")
    folds = min(round(1 / VALIDATION_SHARE), len(case_ids))
    return stratified_folds(case_ids, subtypes, folds, seed)[0]
