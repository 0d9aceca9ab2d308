"""The pickle-free forest: numpy reproduces scikit-learn's probabilities after a file round trip,
refuses foreign or damaged files with one line, and loads neither torch nor scikit-learn."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier

from edgepanc.errors import InputError
from edgepanc.postprocessing.forest import ForestModel, forest_from_sklearn, forest_to_json
from edgepanc.postprocessing.lesion_features import FEATURE_NAMES

F = len(FEATURE_NAMES)


def random_problem(seed: int, classes=(0, 1, 2), n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F)) * rng.uniform(0.1, 100.0, size=F)
    y = np.asarray(classes)[rng.integers(0, len(classes), size=n)]
    x[:, 3] += 2.0 * y  # some signal, so that trees are not all stumps
    return x, y


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[ExtraTreesClassifier, Path]:
    x, y = random_problem(0)
    forest = ExtraTreesClassifier(
        n_estimators=40, min_samples_leaf=2, class_weight="balanced", random_state=0, n_jobs=1
    ).fit(x, y)
    path = tmp_path_factory.mktemp("forest") / "lesion_forest.json"
    forest_to_json(forest_from_sklearn(forest, FEATURE_NAMES), path)
    return forest, path


def test_a_json_round_trip_reproduces_scikit_learns_probabilities(fitted):
    forest, path = fitted
    model = ForestModel.from_json(path)
    assert model.classes == (0, 1, 2) and model.feature_names == FEATURE_NAMES
    assert len(model.trees) == 40
    x, _ = random_problem(1, n=300)
    # Rows exactly on split thresholds exercise the "<=" side and the float32 cast.
    thresholds = [(t.feature[0], t.threshold[0]) for t in model.trees if t.feature[0] >= 0]
    for row, (feature, threshold) in enumerate(thresholds):
        x[row, feature] = threshold
    expected = forest.predict_proba(x)
    got = model.predict_proba(x)
    assert got.shape == (300, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.array_equal(model.predict(x), forest.predict(x))


def test_class_labels_that_are_not_0_to_c_survive_the_round_trip(tmp_path):
    x, y = random_problem(2, classes=(0, 2))
    forest = ExtraTreesClassifier(n_estimators=15, random_state=1).fit(x, y)
    path = tmp_path / "two.json"
    forest_to_json(forest_from_sklearn(forest, FEATURE_NAMES), path)
    model = ForestModel.from_json(path)
    test_x, _ = random_problem(3)
    assert model.classes == (0, 2)
    np.testing.assert_allclose(
        model.predict_proba(test_x), forest.predict_proba(test_x), atol=1e-12
    )
    assert set(model.predict(test_x).tolist()) <= {0, 2}


def test_features_of_the_wrong_width_or_not_finite_are_refused(fitted):
    model = ForestModel.from_json(fitted[1])
    with pytest.raises(ValueError, match=rf"\[N, {F}\]"):
        model.predict_proba(np.zeros((2, F - 1)))
    with pytest.raises(ValueError, match="finite"):
        model.predict_proba(np.full((1, F), 1e39))  # beyond float32, as scikit-learn refuses


def one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        ForestModel.from_json(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and path.stem in message  # the JSON or the arrays beside it
    return message


def copy_forest(fitted, tmp_path: Path) -> tuple[Path, dict]:
    source = fitted[1]
    path = tmp_path / source.name
    path.write_text(source.read_text())
    (tmp_path / source.with_suffix(".npz").name).write_bytes(
        source.with_suffix(".npz").read_bytes()
    )
    return path, json.loads(path.read_text())


def test_a_forest_fitted_on_other_features_is_refused_with_one_line(fitted, tmp_path):
    path, meta = copy_forest(fitted, tmp_path)
    meta["feature_names"][5] = "roundness"
    path.write_text(json.dumps(meta))
    message = one_line_error(path)
    assert f"feature 5 is 'roundness', expected '{FEATURE_NAMES[5]}'" in message
    renamed = (*FEATURE_NAMES[:-1], "something_else")
    assert "expected 'something_else'" in one_line_error(fitted[1], feature_names=renamed)
    assert f"{F} features, expected {F + 1}" in one_line_error(
        fitted[1], feature_names=(*FEATURE_NAMES, "extra")
    )


def test_damaged_or_foreign_files_are_refused_with_one_line(fitted, tmp_path):
    path, meta = copy_forest(fitted, tmp_path)
    arrays = dict(np.load(path.with_suffix(".npz")))
    arrays["children_left"][0] = 0  # the root its own child: a walk that never ends
    np.savez(path.with_suffix(".npz"), **arrays)
    assert "backwards" in one_line_error(path)
    path.write_text(json.dumps({**meta, "arrays": "../elsewhere.npz"}))
    assert "beside it" in one_line_error(path)
    path.write_text(json.dumps({**meta, "format": "something"}))
    assert "not an edgepanc-forest file" in one_line_error(path)
    path.write_text("{not json")
    assert "not a readable JSON file" in one_line_error(path)
    assert "no such" in one_line_error(tmp_path / "absent.json")


class Evil:
    """Unpickling it touches ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_pickled_array_file_is_refused_and_runs_nothing(fitted, tmp_path):
    path, _ = copy_forest(fitted, tmp_path)
    arrays = dict(np.load(path.with_suffix(".npz")))
    marker = tmp_path / "ran"
    arrays["value"] = np.array([Evil(marker)], dtype=object)
    np.savez(path.with_suffix(".npz"), **arrays)
    assert not marker.exists()
    assert "not a readable array file" in one_line_error(path)
    assert not marker.exists()


def test_predicting_from_a_file_loads_neither_torch_nor_scikit_learn(fitted):
    """The runtime side: a fresh interpreter imports the features and the forest, reads the
    file and predicts; torch and scikit-learn stay out of ``sys.modules``."""
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from edgepanc.postprocessing.forest import ForestModel\n"
        "from edgepanc.postprocessing.lesion_features import lesion_features\n"
        "labels = np.zeros((6, 8, 8), np.uint8); labels[1:5, 1:7, 1:7] = 1; labels[2:4, 3:5, 3:5] = 2\n"
        "row = lesion_features(np.where(labels == 2, 20.0, 90.0), labels, (2.0, 1.0, 1.0))\n"
        f"probabilities = ForestModel.from_json({str(fitted[1])!r}).predict_proba(row[None])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn'))\n"
        "print(json.dumps([probabilities.tolist(), loaded]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    probabilities, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == []
    assert np.array(probabilities).shape == (1, 3) and sum(probabilities[0]) == pytest.approx(1.0)
