"""How far the subtype can go on the lesion the segmentation finds: a linear probe on the lesion's
attenuation statistics, under the reference lesion mask and under the network's own prediction.

    pip install -e ".[analysis]"   # scikit-learn, for the probe
    python scripts/subtype_ceiling.py --model RUN --data DATA [--fresh DATA2]

For every labelled case, one patch centred on the reference lesion goes through the network; the
statistics its subtype head reads from the input (:func:`region_intensity_statistics`: mean and
standard deviation under the lesion, its core, its rim, a shell round it and the pancreas) are
computed once under the reference mask and once under the predicted probabilities. A standardised
multinomial logistic regression is fitted on DATA's training cases and scored as macro F1: by
5-fold cross-validation on the training cases, on DATA's validation split and on every labelled
case of ``--fresh`` (phantoms the network never saw). The probe is not the product's classifier;
it says whether a subtype error comes from the head (the probe does better under the predicted
mask) or from the mask (only the reference mask does better).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from edgepanc.bundle import load_bundle
from edgepanc.networks.config import LESION_LABEL
from edgepanc.networks.unet import (
    class_probabilities,
    region_intensity_statistics,
    teacher_forced_probability,
)
from edgepanc.training.dataset import prepare_case
from edgepanc.training.runner import labelled_cases
from edgepanc.training.sampling import extract_patch


def lesion_statistics(
    network: torch.nn.Module, image: np.ndarray, label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The head's input statistics for one patch: (under the reference mask, under the prediction)."""
    x = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        seg, _ = network(x)
    predicted = class_probabilities(seg.float())
    # The reference mask as the head sees it under teacher forcing.
    reference = teacher_forced_probability(
        predicted, torch.from_numpy(label.astype(np.int64))[None], torch.tensor([True])
    )
    regions = network.config.intensity_regions
    return tuple(
        region_intensity_statistics(x, probability, regions)[0].numpy()
        for probability in (reference, predicted)
    )


def collect(
    network: torch.nn.Module, plan: Any, data: Path, splits: set[str]
) -> dict[str, np.ndarray]:
    """Statistics of every labelled case in ``splits`` that has a lesion (the subtype is about it)."""
    patch = tuple(int(p) for p in plan.patch_size)
    reference, predicted, subtypes = [], [], []
    for case in (c for c in labelled_cases(data) if c.split in splits):
        prepared = prepare_case(case, plan)
        if not np.any(prepared.label == LESION_LABEL):
            continue
        centre = np.array(ndimage.center_of_mass(prepared.label == LESION_LABEL))
        image, label = extract_patch(prepared, centre, patch, np.eye(3))
        ref, pred = lesion_statistics(network, image, label)
        reference.append(ref)
        predicted.append(pred)
        subtypes.append(int(case.subtype))
    return {
        "reference": np.stack(reference),
        "predicted": np.stack(predicted),
        "y": np.array(subtypes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--fresh", type=Path, help="more labelled phantoms, scored on all cases")
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation strength")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import f1_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise SystemExit(
            'subtype_ceiling.py: needs scikit-learn: pip install -e ".[analysis]"'
        ) from None

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model)
    network = bundle.load_network().eval()
    sets = {
        "train": collect(network, bundle.plan, args.data, {"train"}),
        "validation": collect(network, bundle.plan, args.data, {"validation"}),
    }
    if args.fresh:
        sets["fresh"] = collect(network, bundle.plan, args.fresh, {"train", "validation"})
    print("mask       " + "  ".join(f"{name} ({len(s['y'])})" for name, s in sets.items()))
    for mask in ("reference", "predicted"):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=5000))
        x, y = sets["train"][mask], sets["train"]["y"]
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        scores = [f1_score(y, cross_val_predict(probe, x, y, cv=folds), average="macro")]
        probe.fit(x, y)
        for name in list(sets)[1:]:
            scores.append(
                f1_score(sets[name]["y"], probe.predict(sets[name][mask]), average="macro")
            )
        print(
            f"{mask:10s} " + "  ".join(f"{s:.3f}" for s in scores), "(macro F1; train: 5-fold CV)"
        )


if __name__ == "__main__":
    main()
