"""How far from the gland organ-sized false components lie, and what each gap rule scores.

    python scripts/component_gap_study.py --model BUNDLE DATA [DATA ...] [--split validation]

Tiles every labelled case of each DATA folder (an ``edgepanc synth`` output) whole, without the
ROI, through the runtime's default backend of BUNDLE; post-processes the raw labels under several
``max_gap_mm`` values (and "largest component only"); prints, per case, the secondary organ
components of at least ``min_fraction`` of the largest with their distance to it, and per folder
the mean whole-pancreas DSC of each rule on the network grid. docs/measurements/component_gap.md
holds the figures behind ``PostprocessConfig.max_gap_mm``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from edgepanc.inferers.streaming import streaming_sliding_window_inference
from edgepanc.io.volume import read_image
from edgepanc.metrics import dice
from edgepanc.postprocessing.labels import (
    PostprocessConfig,
    component_gaps_mm,
    connected_components,
    postprocess_labels,
)
from edgepanc.preprocessing import preprocess_image, preprocess_label
from edgepanc.runtime.model import load_model

GAPS = (None, 5.0, 10.0, 15.0, 20.0, 40.0)


def labelled_images(folder: Path, split: str | None) -> list[Path]:
    images = sorted(folder.glob("**/*_0000.nii.gz"))
    keep = [p for p in images if p.with_name(p.name.replace("_0000.nii.gz", ".nii.gz")).exists()]
    return [p for p in keep if split is None or split in p.relative_to(folder).parts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--split", default=None, help="only this split (default: every labelled)")
    args = parser.parse_args()
    model = load_model(args.model, "auto", "auto", "auto")
    spacing = tuple(float(s) for s in model.plan.target_spacing)
    base = PostprocessConfig()
    rules = {f"gap {g:g} mm" if g else "no gap rule": replace(base, max_gap_mm=g) for g in GAPS}
    rules["largest only"] = replace(base, min_fraction=1.0)
    for folder in args.data:
        scores: dict[str, list[float]] = {name: [] for name in rules}
        for image_path in tqdm(labelled_images(folder, args.split), desc=folder.name):
            label_path = image_path.with_name(image_path.name.replace("_0000.nii.gz", ".nii.gz"))
            volume, grid = preprocess_image(read_image(image_path), model.plan)
            reference = preprocess_label(sitk.ReadImage(str(label_path)), grid) > 0
            raw = streaming_sliding_window_inference(
                volume, model.predictor, model.patch_size, step_fraction=0.5, tile_batch=2
            ).labels
            components, sizes = connected_components(raw > 0)
            if len(sizes) > 1:
                main_label = int(sizes.argmax()) + 1
                gaps = component_gaps_mm(components, main_label, len(sizes), spacing, 1e4)
                big = np.flatnonzero(sizes >= base.min_fraction * sizes.max()) + 1
                described = [
                    f"{sizes[i - 1] / sizes.max():.2f} of the largest at {gaps[i - 1]:.1f} mm"
                    for i in big
                    if i != main_label
                ]
                if described:
                    tqdm.write(f"{image_path.name}: " + "; ".join(described))
            for name, config in rules.items():
                kept = postprocess_labels(raw, spacing, config) > 0
                scores[name].append(dice(kept, reference))
        summary = ", ".join(f"{name} {np.mean(v):.4f}" for name, v in scores.items())
        print(f"{folder} ({len(scores['no gap rule'])} cases), whole DSC: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
