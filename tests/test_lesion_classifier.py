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


def test_the_study_predicts_a_tiny_data_set_with_a_bundle_end_to_end(tmp_path):
    """The prediction side on a tiny network at random weights: every case gets a row measured
    on its predicted mask, and the neural head's subtypes are the validation path's own."""
    import torch

    from edgepanc.bundle import load_bundle
    from edgepanc.data.cases import discover_cases
    from edgepanc.training.dataset import prepare_cases
    from edgepanc.training.validation import validate_cases

    from runtime_support import make_tiny_bundle
    from train_support import write_tiny_dataset

    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=2)
    bundle = make_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "study.json"
    args = [str(bundle), str(data), "--out", str(out), "--fresh", str(data), "--trees", "10"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    sets = [r["set"] for r in report["per_case"]]
    assert sets.count("train") == 6 and sets.count("validation") == 3 and sets.count("fresh") == 9
    assert report["forest_cv_train"]["folds"] == 2 and report["fresh"]["cases"] == 9
    assert all(
        len(r["features"]) == F and np.all(np.isfinite(r["features"])) for r in report["per_case"]
    )
    loaded = load_bundle(bundle)
    cases = [c for c in discover_cases(data) if c.split == "validation"]
    expected = validate_cases(
        loaded.load_network(), prepare_cases(cases, loaded.plan), loaded.plan.patch_size, "cpu"
    )
    by_id = {r["case_id"]: r for r in report["per_case"] if r["set"] == "validation"}
    for result in expected:
        assert by_id[result.case_id]["neural"] == result.predicted_subtype
        assert by_id[result.case_id]["lesion_dsc"] == result.lesion_dsc
        kept = by_id[result.case_id]["neural_probabilities"]
        assert np.allclose(kept, result.probabilities, atol=1e-6)


def test_the_study_reads_the_network_from_a_checkpoint_when_given_one(tmp_path):
    """``--weights`` replaces the bundle's network: a head biased hard towards subtype 2 names
    every case 2, where the bundle's own weights do not."""
    import torch

    from edgepanc.bundle import load_bundle
    from edgepanc.training.checkpoint import save_checkpoint

    from runtime_support import make_tiny_bundle
    from train_support import write_tiny_dataset

    torch.set_num_threads(1)
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=2)
    bundle = make_tiny_bundle(tmp_path / "bundle")
    network = load_bundle(bundle).load_network()
    with torch.no_grad():
        network.cls_head.fc2.weight.zero_()
        network.cls_head.fc2.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    save_checkpoint(tmp_path / "last.pt", {"model": network.state_dict()})
    out = tmp_path / "study.json"
    args = [str(bundle), str(data), "--out", str(out), "--trees", "5"]
    assert main([*args, "--weights", str(tmp_path / "last.pt")]) == 0
    report = json.loads(out.read_text())
    assert report["weights"] == str(tmp_path / "last.pt")
    assert {row["neural"] for row in report["per_case"]} == {2}
    assert all(row["neural_probabilities"][2] > 0.99 for row in report["per_case"])


def test_the_study_measures_features_on_the_scan_under_the_restored_mask(tmp_path, monkeypatch):
    """With the reference as the 'prediction', each row reads the scan's own CT numbers under
    the mask mapped back onto the scan's grid: lesion HU follows the subtype's brightness."""
    import SimpleITK as sitk

    import edgepanc.training.validation as validation
    from edgepanc.postprocessing import FinishedPrediction

    from runtime_support import make_tiny_bundle
    from train_support import LESION_HU, write_tiny_dataset

    def perfect(network, case, patch_size, device, *args, **kwargs):
        return FinishedPrediction(
            case.label.copy(), None, np.eye(3, dtype=np.float32)[case.subtype]
        )

    monkeypatch.setattr(validation, "predict_case", perfect)
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=2)
    out = tmp_path / "study.json"
    assert main([str(make_tiny_bundle(tmp_path / "b")), str(data), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["validation"]["neural"]["accuracy"] == 1.0
    lesion_hu: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for row in report["per_case"]:
        f = dict(zip(FEATURE_NAMES, row["features"], strict=True))
        assert row["neural"] == row["subtype"]
        assert 50 < f["pancreas_hu_mean"] < 110  # the gland's HU: image and mask line up
        reference = next(data.rglob(f"{row['case_id']}.nii.gz"))
        gland_ml = np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(reference))) * 0.002
        assert abs(f["gland_ml"] - gland_ml) < 0.35 * gland_ml
        if f["has_lesion"]:
            lesion_hu[row["subtype"]].append(f["hu_mean"])
    assert sum(map(len, lesion_hu.values())) >= 6  # small lesions may vanish at 4 mm
    # Partial volume pulls the means towards the gland, but not past one another.
    means = {subtype: np.mean(values) for subtype, values in lesion_hu.items()}
    assert sorted(means, key=means.get) == sorted(LESION_HU, key=LESION_HU.get)
    assert means[2] > 100
