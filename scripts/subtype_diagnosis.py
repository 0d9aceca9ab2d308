"""Where the subtype is lost: per validation case, the lesion the segmentation finds and what the
subtype head says when it pools under the predicted lesion mask and under the reference one.

    python scripts/subtype_diagnosis.py --model RUN --data DATA [--onnx model_fp32.onnx]

For each validation case: the lesion's diameter, lesion DSC after the runtime's post-processing,
how far the located lesion (the post-processed lesion component with the most probability mass)
lies from the true one, and the subtype the network names on one patch centred on the located
lesion, pooling under its own prediction ("predicted") and under the reference mask
("reference", through the teacher-forcing input). A head that is right under the reference mask
and wrong under its own is waiting for a better lesion segmentation, not for a better head.
The sliding window runs through ONNX Runtime when ``--onnx`` is given (5x faster on a CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from edgepanc.bundle import load_bundle
from edgepanc.inferers.sliding_window import sliding_window_inference
from edgepanc.metrics import classification_metrics, dice
from edgepanc.postprocessing.labels import (
    PostprocessConfig,
    mask_region_probabilities,
    postprocess_labels,
)
from edgepanc.postprocessing.subtype import classify_from_tiles
from edgepanc.training.dataset import PreparedCase, prepare_case
from edgepanc.training.runner import labelled_cases
from edgepanc.training.sampling import extract_patch

LESION = 2


def located_lesion(labels: np.ndarray, lesion_probability: np.ndarray) -> np.ndarray | None:
    """Centre (voxels) of the lesion component with the most probability mass, or None."""
    components, count = ndimage.label(labels == LESION, structure=np.ones((3, 3, 3)))
    if count == 0:
        return None
    mass = ndimage.sum(lesion_probability, components, range(1, count + 1))
    return np.array(ndimage.center_of_mass(components == int(np.argmax(mass)) + 1))


def head_subtypes(
    network: torch.nn.Module, case: PreparedCase, centre: np.ndarray, patch: tuple[int, ...]
) -> tuple[int, int]:
    """Subtype named on a patch round ``centre``: (own prediction, reference mask)."""
    image, label = extract_patch(case, centre, patch, np.eye(3))
    x = torch.from_numpy(image)[None, None]
    reference = (torch.from_numpy(label.astype(np.int64))[None], torch.tensor([True]))
    with torch.no_grad():
        _, own = network(x)
        _, forced = network(x, reference)
    return int(own.argmax()), int(forced.argmax())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, help="fp32 ONNX export of the same weights")
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    network = bundle.load_network().eval()
    plan = bundle.plan
    patch = tuple(int(p) for p in plan.patch_size)
    if args.onnx:
        from edgepanc.backends.onnxruntime_backend import OnnxRuntimePredictor

        predictor = OnnxRuntimePredictor(args.onnx)
    else:
        from edgepanc.backends.torch_backend import TorchPredictor

        predictor = TorchPredictor(network, device="cpu", precision="fp32")

    truth, tiles, own, forced = [], [], [], []
    print("case subtype diameter_mm lesion_dsc located_off_mm tiles predicted reference")
    for case in (c for c in labelled_cases(args.data) if c.split == "validation"):
        prepared = prepare_case(case, plan)
        result = sliding_window_inference(
            prepared.image,
            predictor,
            patch,
            step_fraction=0.5,
            tile_batch=4,
            keep_logits=True,
            keep_probabilities=True,
        )
        logits = result.logits
        probability = np.exp(logits - logits.max(0))
        lesion_probability = probability[LESION] / probability.sum(0)
        labels = postprocess_labels(result.labels, prepared.spacing, PostprocessConfig())
        reference = prepared.label == LESION
        true_centre = np.array(ndimage.center_of_mass(reference))
        centre = located_lesion(labels, lesion_probability)
        off_mm = (
            float(np.linalg.norm((centre - true_centre) * np.asarray(prepared.spacing)))
            if centre is not None
            else float("nan")
        )
        named = head_subtypes(network, prepared, true_centre if centre is None else centre, patch)
        volume = reference.sum() * float(np.prod(prepared.spacing))
        diameter = 2 * (3 * volume / (4 * np.pi)) ** (1 / 3)
        truth.append(int(case.subtype))
        kept = mask_region_probabilities(result.probabilities, labels)
        tiles.append(int(np.argmax(classify_from_tiles(result, labels, kept))))
        own.append(named[0])
        forced.append(named[1])
        print(
            f"{case.case_id} {case.subtype} {diameter:.1f} "
            f"{dice(labels == LESION, reference):.3f} {off_mm:.1f} {tiles[-1]} {own[-1]} "
            f"{forced[-1]}",
            flush=True,
        )
    for name, named in (("tiles (runtime)", tiles), ("predicted", own), ("reference", forced)):
        metrics = classification_metrics(truth, named)
        right = sum(t == n for t, n in zip(truth, named, strict=True))
        print(f"{name}: {right} / {len(truth)} right, macro F1 {metrics['macro_f1']:.4f}")


if __name__ == "__main__":
    main()
