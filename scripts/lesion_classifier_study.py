"""Neural subtype head against a forest on features of the predicted lesion, on the same cases.

    python scripts/lesion_classifier_study.py RUN DATA --out study.json [--fresh DATA2]
        [--device cpu|cuda] [--threads 2] [--seed 0] [--forest-out forest.json]
        [--weights RUN/last.pt]
    python scripts/lesion_classifier_study.py --from-rows study.json --out refit.json

Every labelled case of DATA (and of ``--fresh``) goes through the bundle as validation during
training predicts it (``predict_case``: sliding window, post-processing, the subtype weighted by
the kept lesion) and is scored by ``score_case``; the predicted labels, mapped back onto the
scan's grid as ``edgepanc run`` writes them, give the :func:`lesion_features` row on the scan's
own CT numbers. The forest (:func:`fit_lesion_classifier`) is fitted on DATA's training cases
and both classifiers are scored with :func:`edgepanc.metrics.classification_metrics` on DATA's
validation cases and on ``--fresh``; the forest's stratified cross-validation on the training
rows is reported too. The training cases' masks come from a network that saw them, so they are
cleaner than the masks the runtime gives on new scans: the report says so
(``fit_masks``). ``per_case`` keeps every row, with the neural head's probabilities, so
``--from-rows`` refits and rescores without predicting again. ``--weights`` runs a training
checkpoint's network instead of the bundle's (a head refit the run turned down is in
``last.pt``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepanc.io.atomic import write_text_atomic
from edgepanc.metrics import classification_metrics
from edgepanc.postprocessing.forest import ForestModel, forest_to_json
from edgepanc.postprocessing.lesion_features import FEATURE_NAMES, lesion_features
from edgepanc.training.lesion_classifier import (
    DEFAULT_LESION_CLASSIFIER,
    LesionClassifierConfig,
    cross_validated_scores,
    fit_lesion_classifier,
)

FIT_MASKS = "predicted by the bundle on its own training cases (in-sample, not out-of-fold)"


@dataclass
class StudyRows:
    """One set of cases: ids, reference subtypes, the neural head's subtypes, feature rows.

    Example: ``StudyRows(["c1"], [1], [2], np.zeros((1, len(FEATURE_NAMES))))``.
    """

    case_ids: list[str] = field(default_factory=list)
    subtypes: list[int] = field(default_factory=list)
    neural: list[int] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)  # per-case scores, for the report

    def matrix(self) -> np.ndarray:
        """The feature rows as one [N, F] array."""
        return np.array(self.features, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))


def compare_classifiers(
    train: StudyRows,
    evaluations: dict[str, StudyRows],
    seed: int,
    config: LesionClassifierConfig = DEFAULT_LESION_CLASSIFIER,
    folds: int = 5,
) -> tuple[dict[str, Any], ForestModel]:
    """Fit the forest on ``train``; score neural head and forest on each evaluation set.

    Returns the report (``forest_cv_train``, then per set ``neural`` and ``forest`` metrics and
    the forest's predictions in case order) and the fitted model.

    Example: ``compare_classifiers(train, {"validation": val}, seed=0)[0]["validation"]``.
    """
    model = fit_lesion_classifier(train.matrix(), train.subtypes, seed, config)
    report: dict[str, Any] = {
        "fit_cases": len(train.case_ids),
        "forest_cv_train": _without_predictions(
            cross_validated_scores(train.matrix(), train.subtypes, seed, folds, config)
        ),
        "neural_train": classification_metrics(train.subtypes, train.neural),
    }
    for name, rows in evaluations.items():
        if not rows.case_ids:
            continue
        forest = model.predict(rows.matrix()).tolist()
        report[name] = {
            "cases": len(rows.case_ids),
            "neural": classification_metrics(rows.subtypes, rows.neural),
            "forest": classification_metrics(rows.subtypes, forest),
            "forest_predicted": forest,
        }
    return report, model


def predict_rows(network: Any, plan: Any, cases: list[Any], device: str) -> StudyRows:
    """Predict and score ``cases`` (labelled, with a subtype) with ``network`` as validation
    does; measure the lesion features on the predicted labels mapped back onto the scan's grid."""
    import SimpleITK as sitk

    from edgepanc.io.volume import read_image
    from edgepanc.preprocessing import restore_label
    from edgepanc.training.dataset import prepare_case
    from edgepanc.training.validation import predict_case, score_case

    rows = StudyRows()
    for case in cases:
        prepared = prepare_case(case, plan)
        prediction = predict_case(network, prepared, plan.patch_size, device)
        result = score_case(prepared, prediction)
        restored = restore_label(prediction.labels, prepared.grid, prediction.region_probabilities)
        image = read_image(case.image)
        start = time.perf_counter()
        features = lesion_features(
            sitk.GetArrayFromImage(image),
            sitk.GetArrayFromImage(restored),
            tuple(reversed(image.GetSpacing())),
        )
        rows.case_ids.append(case.case_id)
        rows.subtypes.append(int(case.subtype))
        rows.neural.append(int(result.predicted_subtype))
        rows.features.append(features)
        rows.extra.append(
            {
                "split": case.split,
                "whole_dsc": result.whole_dsc,
                "lesion_dsc": result.lesion_dsc,
                "neural_probabilities": [round(p, 6) for p in result.probabilities],
                "feature_seconds": round(time.perf_counter() - start, 4),
            }
        )
    return rows


def predict_sets(
    bundle_dir: Path, data: Path, fresh: Path | None, device: str, weights: Path | None = None
) -> dict[str, StudyRows]:
    """``train`` and ``validation`` from DATA's splits, ``fresh`` from every labelled case of
    the second data set; cases without a subtype are left out. ``weights`` (a training
    checkpoint, e.g. ``last.pt``) replaces the bundle's own network weights.

    Example: ``predict_sets(Path("run"), Path("data"), None, "cpu")["validation"].case_ids``.
    """
    from edgepanc.bundle import load_bundle
    from edgepanc.training.runner import labelled_cases

    bundle = load_bundle(bundle_dir)
    network = bundle.load_network()
    if weights is not None:
        from edgepanc.training.checkpoint import load_checkpoint

        network.load_state_dict(load_checkpoint(weights)["model"])
    network = network.to(device).eval()
    cases = [c for c in labelled_cases(data) if c.subtype is not None]
    chosen = {split: [c for c in cases if c.split == split] for split in ("train", "validation")}
    if fresh is not None:
        chosen["fresh"] = [c for c in labelled_cases(fresh) if c.subtype is not None]
    return {
        name: predict_rows(network, bundle.plan, group, device) for name, group in chosen.items()
    }


def rows_to_json(sets: dict[str, StudyRows]) -> list[dict[str, Any]]:
    """Every case of every set as a plain record (what ``--from-rows`` reads back).

    Example: ``rows_to_json({"train": rows})[0]["set"]`` -> ``"train"``.
    """
    return [
        {
            "set": name,
            "case_id": case_id,
            "subtype": subtype,
            "neural": neural,
            "features": features.tolist(),
            **extra,
        }
        for name, rows in sets.items()
        for case_id, subtype, neural, features, extra in zip(
            rows.case_ids, rows.subtypes, rows.neural, rows.features, rows.extra, strict=True
        )
    ]


def rows_from_json(records: list[dict[str, Any]]) -> dict[str, StudyRows]:
    """The sets :func:`rows_to_json` wrote.

    Example: ``rows_from_json(json.loads(Path("study.json").read_text())["per_case"])["train"]``.
    """
    sets: dict[str, StudyRows] = {}
    for record in records:
        if len(record["features"]) != len(FEATURE_NAMES):
            raise ValueError(f"{record['case_id']}: features of another length than FEATURE_NAMES")
        rows = sets.setdefault(record["set"], StudyRows())
        rows.case_ids.append(record["case_id"])
        rows.subtypes.append(int(record["subtype"]))
        rows.neural.append(int(record["neural"]))
        rows.features.append(np.asarray(record["features"], dtype=np.float64))
        rows.extra.append(
            {
                k: v
                for k, v in record.items()
                if k not in ("set", "case_id", "subtype", "neural", "features")
            }
        )
    return sets


def _without_predictions(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if k != "predicted"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("data", type=Path, nargs="?")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fresh", type=Path, help="a second data set: all its labelled cases")
    parser.add_argument("--from-rows", type=Path, help="a previous --out: refit, do not predict")
    parser.add_argument("--forest-out", type=Path, help="write the fitted forest (JSON + .npz)")
    parser.add_argument("--weights", type=Path, help="a checkpoint whose network replaces RUN's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trees", type=int, default=DEFAULT_LESION_CLASSIFIER.n_estimators)
    parser.add_argument("--min-leaf", type=int, default=DEFAULT_LESION_CLASSIFIER.min_samples_leaf)
    args = parser.parse_args(argv)
    config = LesionClassifierConfig(n_estimators=args.trees, min_samples_leaf=args.min_leaf)
    if args.from_rows is not None:
        sets = rows_from_json(json.loads(args.from_rows.read_text())["per_case"])
    elif args.bundle is None or args.data is None:
        print("error: give RUN and DATA, or --from-rows", file=sys.stderr)
        return 2
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        sets = predict_sets(args.bundle, args.data, args.fresh, args.device, args.weights)
    evaluations = {name: rows for name, rows in sets.items() if name != "train"}
    report, model = compare_classifiers(sets["train"], evaluations, args.seed, config, args.folds)
    if args.forest_out is not None:
        forest_to_json(model, args.forest_out)
    output = {
        "bundle": None if args.bundle is None else str(args.bundle),
        "data": None if args.data is None else str(args.data),
        "fresh": None if args.fresh is None else str(args.fresh),
        "weights": None if args.weights is None else str(args.weights),
        "from_rows": None if args.from_rows is None else str(args.from_rows),
        "seed": args.seed,
        "config": asdict(config),
        "fit_masks": FIT_MASKS,
        "feature_names": list(FEATURE_NAMES),
        **report,
        "per_case": rows_to_json(sets),
    }
    write_text_atomic(args.out, json.dumps(output, indent=1))
    for name in evaluations:
        if name in report:
            pair = {k: round(report[name][k]["macro_f1"], 4) for k in ("neural", "forest")}
            print(name, report[name]["cases"], "cases, macro F1", json.dumps(pair))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
