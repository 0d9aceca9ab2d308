"""A tree-ensemble classifier kept as data and evaluated in numpy: no torch, no scikit-learn, no
pickle at run time.

A fitted scikit-learn forest classifier (e.g. ``ExtraTreesClassifier``) becomes a
:class:`ForestModel` through :func:`forest_from_sklearn`, which reads only the public ``tree_``
arrays of its trees. :func:`forest_to_json` writes it as a small JSON file (feature names,
class labels, tree count) and an ``.npz`` of plain numeric arrays beside it;
:meth:`ForestModel.from_json` reads both back with ``allow_pickle=False`` and checks every array,
so a damaged or foreign file is refused with one line instead of predicting nonsense.

:meth:`ForestModel.predict_proba` reproduces scikit-learn's ``predict_proba``: the features are
cast to float32 as scikit-learn does before walking a tree (a split compares the float32 value,
widened, with the float64 threshold), each tree gives its leaf's class fractions, and the trees
are averaged in order.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepanc.errors import InputError
from edgepanc.io.atomic import write_bytes_atomic, write_json_atomic
from edgepanc.postprocessing.lesion_features import FEATURE_NAMES

FORMAT = "edgepanc-forest"
FORMAT_VERSION = 1
LEAF = -1  # scikit-learn's TREE_LEAF: the child index of a leaf
_ARRAYS = ("node_counts", "children_left", "children_right", "feature", "threshold", "value")


@dataclass(frozen=True)
class TreeArrays:
    """One tree: per-node children (``-1`` at a leaf), split feature and threshold (go left when
    ``x[feature] <= threshold``) and class probabilities ``value`` [nodes, classes].

    Example: ``TreeArrays(np.array([1, -1, -1]), np.array([2, -1, -1]), np.array([0, -2, -2]),
    np.array([0.5, -2, -2]), np.array([[.5, .5], [1, 0], [0, 1]]))`` is one split on feature 0.
    """

    children_left: np.ndarray
    children_right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class ForestModel:
    """A forest classifier as arrays: the mean of its trees' leaf probabilities.

    Example: ``ForestModel.from_json("lesion_forest.json").predict(features[None])`` -> ``[1]``.
    """

    feature_names: tuple[str, ...]
    classes: tuple[int, ...]
    trees: tuple[TreeArrays, ...]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] (columns in :attr:`classes` order) for ``features`` [N, F].

        Example: ``model.predict_proba(np.zeros((2, len(model.feature_names)))).sum(axis=1)`` ->
        ``array([1., 1.])``.
        """
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"features must be [N, {len(self.feature_names)}], got {x.shape}")
        with np.errstate(over="ignore"):  # too large for float32 becomes inf, refused below
            x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("features must be finite in float32")
        left, right, feature, threshold, value, roots = _flatten(self.trees)
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(roots, (len(x), len(roots))).copy()
        internal = left[node] != LEAF
        while internal.any():  # children have larger indices than parents: this ends
            split = np.where(internal, feature[node], 0)
            go_left = x[rows, split] <= threshold[node]
            node = np.where(internal, np.where(go_left, left[node], right[node]), node)
            internal = left[node] != LEAF
        probabilities = np.zeros((len(x), len(self.classes)), dtype=np.float64)
        for tree in range(len(roots)):  # in order, as scikit-learn accumulates them
            probabilities += value[node[:, tree]]
        return probabilities / len(roots)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The most probable class label per row (the first of equals, as scikit-learn).

        Example: ``model.predict(rows)`` -> ``array([0, 2])``.
        """
        return np.asarray(self.classes)[np.argmax(self.predict_proba(features), axis=1)]

    @classmethod
    def from_json(
        cls, path: str | Path, feature_names: Sequence[str] = FEATURE_NAMES
    ) -> ForestModel:
        """Read a model written by :func:`forest_to_json`; refuse it with :class:`InputError` if
        it is not one, is damaged, or was fitted on other features than ``feature_names``.

        Example: ``ForestModel.from_json(bundle / "lesion_forest.json").classes`` -> ``(0, 1, 2)``.
        """
        path = Path(path)
        meta = _read_meta(path)
        if tuple(meta["feature_names"]) != tuple(feature_names):
            raise InputError(
                path,
                f"fitted on other features than this edgepanc computes "
                f"({_first_difference(meta['feature_names'], feature_names)}): refit it",
            )
        arrays = _read_arrays(path, path.parent / meta["arrays"])
        trees = _split_trees(path, arrays, len(feature_names), len(meta["classes"]))
        if len(trees) != meta["n_trees"]:
            raise InputError(path, f"holds {len(trees)} trees, its header says {meta['n_trees']}")
        return cls(tuple(feature_names), tuple(int(c) for c in meta["classes"]), trees)


def forest_from_sklearn(estimator: Any, feature_names: Sequence[str]) -> ForestModel:
    """A :class:`ForestModel` of a fitted single-output scikit-learn forest classifier.

    Only the public ``estimators_[i].tree_`` arrays are read, so this module imports no
    scikit-learn. Each node's class weights become fractions where they are not already.

    Example: ``forest_from_sklearn(ExtraTreesClassifier().fit(x, y), FEATURE_NAMES)``.
    """
    if getattr(estimator, "n_outputs_", 1) != 1:
        raise ValueError("only single-output forests can be exported")
    if estimator.n_features_in_ != len(feature_names):
        raise ValueError(f"fitted on {estimator.n_features_in_} features, not {len(feature_names)}")
    n_classes = len(estimator.classes_)
    trees = []
    for member in estimator.estimators_:
        tree = member.tree_
        weights = np.asarray(tree.value, dtype=np.float64)[:, 0, :n_classes]
        total = weights.sum(axis=1, keepdims=True)
        # scikit-learn >= 1.4 stores fractions already (dividing again would move the last bit);
        # older versions store weights and divide in predict_proba.
        stored = (np.abs(total - 1.0) <= 1e-9) | (total == 0.0)
        value = np.where(stored, weights, weights / np.where(stored, 1.0, total))
        trees.append(
            TreeArrays(
                children_left=np.asarray(tree.children_left, dtype=np.int64),
                children_right=np.asarray(tree.children_right, dtype=np.int64),
                feature=np.asarray(tree.feature, dtype=np.int64),
                threshold=np.asarray(tree.threshold, dtype=np.float64),
                value=value,
            )
        )
    classes = tuple(int(c) for c in estimator.classes_)
    return ForestModel(tuple(feature_names), classes, tuple(trees))


def forest_to_json(model: ForestModel, path: str | Path) -> Path:
    """Write ``model`` as ``path`` (JSON) plus the arrays beside it (``.npz``, same stem);
    return the arrays' path. Both writes are atomic.

    Example: ``forest_to_json(model, bundle / "lesion_forest.json")`` ->
    ``bundle / "lesion_forest.npz"``.
    """
    path = Path(path)
    arrays_path = path.with_suffix(".npz")
    trees = model.trees
    arrays = {
        "node_counts": np.array([len(t.children_left) for t in trees], dtype=np.int64),
        "children_left": np.concatenate([t.children_left for t in trees]).astype(np.int64),
        "children_right": np.concatenate([t.children_right for t in trees]).astype(np.int64),
        "feature": np.concatenate([t.feature for t in trees]).astype(np.int64),
        "threshold": np.concatenate([t.threshold for t in trees]).astype(np.float64),
        "value": np.concatenate([t.value for t in trees]).astype(np.float64),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(arrays_path, buffer.getvalue())
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "feature_names": list(model.feature_names),
        "classes": list(model.classes),
        "n_trees": len(trees),
        "arrays": arrays_path.name,
    }
    write_json_atomic(path, meta)
    return arrays_path


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such lesion classifier file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"not a readable JSON file ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(path, f"not an {FORMAT} file")
    if meta.get("version") != FORMAT_VERSION:
        raise InputError(path, f"format version {meta.get('version')!r}, expected {FORMAT_VERSION}")
    names, classes, arrays = meta.get("feature_names"), meta.get("classes"), meta.get("arrays")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(path, "feature_names must be a list of strings")
    if not isinstance(classes, list) or not classes or not all(type(c) is int for c in classes):
        raise InputError(path, "classes must be a non-empty list of integers")
    if len(set(classes)) != len(classes):
        raise InputError(path, f"classes {classes} repeat a label")
    if not isinstance(meta.get("n_trees"), int) or meta["n_trees"] < 1:
        raise InputError(path, "n_trees must be a positive integer")
    # A plain name beside the JSON: the header cannot point the reader elsewhere.
    if not isinstance(arrays, str) or Path(arrays).name != arrays or arrays in ("", ".", ".."):
        raise InputError(path, "arrays must name a file beside it")
    return meta


def _read_arrays(path: Path, arrays_path: Path) -> dict[str, np.ndarray]:
    if not arrays_path.is_file():
        raise InputError(path, f"its arrays file {arrays_path.name} is missing")
    try:
        with np.load(arrays_path, allow_pickle=False) as archive:
            missing = [name for name in _ARRAYS if name not in archive.files]
            if missing:
                raise InputError(arrays_path, f"lacks the arrays {missing}")
            return {name: archive[name] for name in _ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(arrays_path, f"not a readable array file ({error})") from None


def _split_trees(
    path: Path, arrays: dict[str, np.ndarray], n_features: int, n_classes: int
) -> tuple[TreeArrays, ...]:
    """The trees of the concatenated arrays, after every check that keeps prediction safe."""
    counts = arrays["node_counts"]
    if counts.ndim != 1 or counts.dtype.kind not in "iu" or len(counts) == 0 or counts.min() < 1:
        raise InputError(path, "node_counts must be positive integers, one per tree")
    nodes = int(counts.sum())
    for name in _ARRAYS[1:5]:
        kind = "f" if name == "threshold" else "iu"
        if arrays[name].shape != (nodes,) or arrays[name].dtype.kind not in kind:
            raise InputError(
                path, f"{name} must hold {nodes} {'floats' if kind == 'f' else 'ints'}"
            )
    value = arrays["value"]
    if value.shape != (nodes, n_classes) or value.dtype.kind != "f":
        raise InputError(path, f"value must be {nodes} x {n_classes} floats")
    if (
        not np.all(np.isfinite(value))
        or value.min() < 0
        or not np.all(np.isfinite(arrays["threshold"]))
    ):
        raise InputError(path, "value and threshold must be finite, value non-negative")
    trees = []
    for start, count in zip(np.cumsum(counts) - counts, counts, strict=True):
        part = {name: arrays[name][start : start + count] for name in _ARRAYS[1:]}
        _check_tree(path, part, n_features)
        trees.append(TreeArrays(**part))
    return tuple(trees)


def _check_tree(path: Path, tree: dict[str, np.ndarray], n_features: int) -> None:
    left, right, feature = tree["children_left"], tree["children_right"], tree["feature"]
    own = np.arange(len(left))
    leaf = left == LEAF
    if np.any(leaf != (right == LEAF)):
        raise InputError(path, "a node has one child only")
    # Children after their parent: the walk always moves forward and ends.
    inside = (left > own) & (left < len(left)) & (right > own) & (right < len(left))
    if not np.all(inside | leaf):
        raise InputError(path, "a child index points outside its tree or backwards")
    if np.any(~leaf & ((feature < 0) | (feature >= n_features))):
        raise InputError(path, f"a split uses a feature outside 0..{n_features - 1}")


def _flatten(trees: Sequence[TreeArrays]) -> tuple[np.ndarray, ...]:
    """All trees in one node table (children shifted to global indices) and each tree's root."""
    counts = np.array([len(t.children_left) for t in trees], dtype=np.int64)
    roots = np.cumsum(counts) - counts
    shift = np.repeat(roots, counts)
    left = np.concatenate([t.children_left for t in trees]).astype(np.int64)
    right = np.concatenate([t.children_right for t in trees]).astype(np.int64)
    leaf = left == LEAF
    left = np.where(leaf, LEAF, left + shift)
    right = np.where(leaf, LEAF, right + shift)
    feature = np.concatenate([t.feature for t in trees])
    threshold = np.concatenate([t.threshold for t in trees]).astype(np.float64)
    value = np.concatenate([t.value for t in trees]).astype(np.float64)
    return left, right, feature, threshold, value, roots


def _first_difference(found: Sequence[str], expected: Sequence[str]) -> str:
    """Where two feature lists part, in a few words for an error line."""
    for index, (a, b) in enumerate(zip(found, expected, strict=False)):
        if a != b:
            return f"feature {index} is {a!r}, expected {b!r}"
    return f"{len(found)} features, expected {len(expected)}"


__all__ = ["FORMAT", "ForestModel", "TreeArrays", "forest_from_sklearn", "forest_to_json"]
