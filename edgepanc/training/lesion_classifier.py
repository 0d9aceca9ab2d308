"""The lesion-level subtype classifier's training side: an ExtraTrees forest on
:func:`~edgepanc.postprocessing.lesion_features.lesion_features` rows, kept as a
:class:`~edgepanc.postprocessing.forest.ForestModel` (write it with
:func:`~edgepanc.postprocessing.forest.forest_to_json`; the runtime reads it without
scikit-learn), and its stratified cross-validated scores, comparable with the neural head's
through :func:`edgepanc.metrics.classification_metrics`.

scikit-learn is imported inside the functions: only fitting needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgepanc.metrics import classification_metrics
from edgepanc.postprocessing.forest import ForestModel, forest_from_sklearn
from edgepanc.postprocessing.lesion_features import FEATURE_NAMES


@dataclass(frozen=True)
class LesionClassifierConfig:
    """The forest's knobs (scikit-learn ``ExtraTreesClassifier`` parameters).

    Balanced class weights, since subtypes are rarely equally common; small leaves, since a
    few hundred cases are all there is; ``sqrt`` features per split, the usual ExtraTrees choice.

    Example: ``LesionClassifierConfig(n_estimators=100, min_samples_leaf=1)``.
    """

    n_estimators: int = 400
    min_samples_leaf: int = 2
    max_features: str | float = "sqrt"
    class_weight: str | None = "balanced"
    bootstrap: bool = False
    n_jobs: int = 1


DEFAULT_LESION_CLASSIFIER = LesionClassifierConfig()


def fit_lesion_classifier(
    feature_rows: np.ndarray,
    subtypes: Sequence[int],
    seed: int,
    config: LesionClassifierConfig = DEFAULT_LESION_CLASSIFIER,
    feature_names: Sequence[str] = FEATURE_NAMES,
) -> ForestModel:
    """Fit the forest on ``feature_rows`` [N, F] and ``subtypes`` [N]; return it as arrays.

    Example::

        >>> model = fit_lesion_classifier(rows, [0, 1, 2, 1], seed=0)
        >>> model.predict(rows).shape
        (4,)
    """
    from sklearn.ensemble import ExtraTreesClassifier

    x, y = _checked(feature_rows, subtypes, feature_names)
    forest = ExtraTreesClassifier(random_state=seed, **asdict(config))
    forest.fit(x, y)
    return forest_from_sklearn(forest, feature_names)


def cross_validated_scores(
    feature_rows: np.ndarray,
    subtypes: Sequence[int],
    seed: int,
    folds: int = 5,
    config: LesionClassifierConfig = DEFAULT_LESION_CLASSIFIER,
    num_classes: int = 3,
) -> dict[str, Any]:
    """Stratified k-fold scores of the forest: every case predicted once by a forest that did
    not see it, then scored together (``macro_f1``, ``accuracy``, ``confusion``, ...) as
    :func:`edgepanc.metrics.classification_metrics` scores the neural head; plus each fold's
    macro F1 and the out-of-fold predictions in case order. The folds shrink to the smallest
    class's count when it has fewer cases than ``folds``.

    Example: ``cross_validated_scores(rows, subtypes, seed=0)["macro_f1"]`` -> ``0.71``.
    """
    from sklearn.model_selection import StratifiedKFold

    names = tuple(f"f{i}" for i in range(np.shape(feature_rows)[-1]))
    x, y = _checked(feature_rows, subtypes, names)
    counts = np.bincount(y)
    splits = min(folds, int(counts[counts > 0].min()))
    if splits < 2 or np.count_nonzero(counts) < 2:
        raise ValueError(f"need two subtypes with 2 cases each at least, got counts {counts}")
    predicted = np.empty_like(y)
    per_fold = []
    for train, test in StratifiedKFold(splits, shuffle=True, random_state=seed).split(x, y):
        model = fit_lesion_classifier(x[train], y[train], seed, config, names)
        predicted[test] = model.predict(x[test])
        per_fold.append(classification_metrics(y[test], predicted[test], num_classes)["macro_f1"])
    scores = classification_metrics(y, predicted, num_classes)
    scores.update(folds=splits, fold_macro_f1=per_fold, predicted=predicted.tolist())
    return scores


def _checked(
    feature_rows: np.ndarray, subtypes: Sequence[int], feature_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(feature_rows, dtype=np.float64)
    y = np.asarray(subtypes, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != len(feature_names) or y.shape != (len(x),):
        raise ValueError(
            f"need rows [N, {len(feature_names)}] and N subtypes, got {x.shape} and {y.shape}"
        )
    if len(x) == 0 or y.min() < 0:
        raise ValueError("need at least one row and non-negative subtypes")
    return x, y


__all__ = [
    "DEFAULT_LESION_CLASSIFIER",
    "LesionClassifierConfig",
    "cross_validated_scores",
    "fit_lesion_classifier",
]
