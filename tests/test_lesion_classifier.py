"""The lesion forest's training side and the study script's fitting and scoring (on small
synthetic feature rows: predicting real cases is the coordinator's run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepanc.metrics import classification_metrics
from edgepanc.postprocessing.forest import ForestModel
from edgepanc.postprocessing.lesion_features import FEATURE_NAMES
from edgepanc.training.lesion_classifier import (
    LesionClassifierConfig,
    cross_validated_scores,
    fit_lesion_classifier,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lesion_classifier_study import StudyRows, compare_classifiers, main, rows_to_json  # noqa: E402

F = len(FEATURE_NAMES)
SMALL = LesionClassifierConfig(n_estimators=25)


def clusters(seed: int, per_class: tuple[int, ...] = (12, 12, 12)) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose subtype shows in every third feature, far above the noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(per_class)), per_class)
    x = rng.normal(size=(len(y), F))
    x[:, ::3] += 10.0 * y[:, None]
    return x, y


def test_the_fitted_forest_has_the_configured_trees_and_separates_clear_classes():
    x, y = clusters(0)
    model = fit_lesion_classifier(x, y, seed=0, config=SMALL)
    assert len(model.trees) == 25 and model.classes == (0, 1, 2)
    assert model.feature_names == FEATURE_NAMES
    test_x, test_y = clusters(1)
    assert np.array_equal(model.predict(test_x), test_y)
    again = fit_lesion_classifier(x, y, seed=0, config=SMALL)
    np.testing.assert_array_equal(again.predict_proba(test_x), model.predict_proba(test_x))
    with pytest.raises(ValueError, match=rf"\[N, {F}\]"):
        fit_lesion_classifier(x[:, :5], y, seed=0)


def test_cross_validation_predicts_every_case_out_of_fold():
    x, y = clusters(2)
    scores = cross_validated_scores(x, y, seed=0, folds=4, config=SMALL)
    assert scores["folds"] == 4 and len(scores["fold_macro_f1"]) == 4
    assert scores["macro_f1"] == 1.0 and scores["accuracy"] == 1.0
    assert scores["predicted"] == y.tolist()
    # Labels that no feature carries: held-out cases cannot be predicted, training ones could.
    shuffled = np.random.default_rng(3).permutation(y)
    blind = cross_validated_scores(x, shuffled, seed=0, folds=4, config=SMALL)
    assert blind["macro_f1"] < 0.7
    fewer = cross_validated_scores(*clusters(4, per_class=(3, 10, 10)), seed=0, config=SMALL)
    assert fewer["folds"] == 3  # the smallest subtype has 3 cases
    with pytest.raises(ValueError, match="two subtypes"):
        cross_validated_scores(x[:12], y[:12], seed=0, config=SMALL)


def study_rows(seed: int, neural_offset: int) -> StudyRows:
    x, y = clusters(seed)
    return StudyRows(
        case_ids=[f"case_{seed}_{i:02d}" for i in range(len(y))],
        subtypes=y.tolist(),
        neural=((y + neural_offset) % 3).tolist(),
        features=list(x),
        extra=[{"split": "train", "lesion_dsc": 0.5}] * len(y),
    )


def test_the_study_scores_both_classifiers_on_each_set():
    train, validation = study_rows(5, 0), study_rows(6, 1)  # the neural head always wrong there
    report, model = compare_classifiers(train, {"validation": validation}, seed=0, config=SMALL)
    assert report["fit_cases"] == 36 and report["forest_cv_train"]["macro_f1"] == 1.0
    assert "predicted" not in report["forest_cv_train"]
    assert report["neural_train"]["accuracy"] == 1.0
    assert report["validation"]["neural"]["accuracy"] == 0.0
    assert report["validation"]["forest"] == classification_metrics(
        validation.subtypes, model.predict(validation.matrix())
    )
    assert report["validation"]["forest"]["macro_f1"] == 1.0


def test_the_study_refits_from_its_own_rows_and_writes_a_forest_the_runtime_reads(tmp_path):
    rows = tmp_path / "rows.json"
    sets = {"train": study_rows(7, 0), "validation": study_rows(8, 2)}
    rows.write_text(json.dumps({"per_case": rows_to_json(sets)}))
    out, forest = tmp_path / "refit.json", tmp_path / "forest.json"
    args = ["--from-rows", str(rows), "--out", str(out), "--forest-out", str(forest)]
    assert main([*args, "--trees", "20", "--seed", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["n_estimators"] == 20 and report["fit_masks"].startswith("predicted")
    assert report["validation"]["cases"] == 36
    assert report["validation"]["forest"]["macro_f1"] == 1.0
    assert report["validation"]["neural"]["accuracy"] == 0.0
    assert [r["case_id"] for r in report["per_case"]] == sets["train"].case_ids + sets[
        "validation"
    ].case_ids
    model = ForestModel.from_json(forest)
    assert len(model.trees) == 20
    assert (
        report["validation"]["forest_predicted"]
        == model.predict(sets["validation"].matrix()).tolist()
    )
