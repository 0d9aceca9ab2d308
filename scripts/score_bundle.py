"""Score a trained bundle, or one of its checkpoints, on the labelled cases of a data set.

The same code path as validation during training (``validate_cases`` + ``summarize_results``:
whole-volume sliding window, post-processing, whole pancreas DSC, lesion DSC, macro F1), on any
phantom set, e.g. fresh phantoms the run never saw:

    python scripts/score_bundle.py RUN DATA --out scores.json [--weights RUN/last.pt]
        [--splits train,validation] [--device cpu|cuda] [--threads 2]

Used to compare training recipes on more cases than the 12 of the validation split, where
macro F1 moves by 0.1 between runs that differ by one flag.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from edgepanc.bundle import load_bundle
from edgepanc.io.atomic import write_text_atomic
from edgepanc.training.checkpoint import load_checkpoint
from edgepanc.training.dataset import prepare_cases
from edgepanc.training.runner import labelled_cases
from edgepanc.training.validation import summarize_results, validate_cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", type=Path, help="a checkpoint (e.g. last.pt) to score instead")
    parser.add_argument("--splits", default="train,validation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    model = bundle.load_network()
    if args.weights is not None:
        model.load_state_dict(load_checkpoint(args.weights)["model"])
    model.to(args.device)
    splits = set(args.splits.split(","))
    cases = [c for c in labelled_cases(args.data) if c.split in splits]
    if not cases:
        print(f"error: {args.data}: no labelled cases in splits {sorted(splits)}", file=sys.stderr)
        return 2
    prepared = prepare_cases(cases, bundle.plan)
    start = time.perf_counter()
    results = validate_cases(
        model, prepared, bundle.plan.patch_size, torch.device(args.device).type
    )
    summary = summarize_results(results)
    summary.update(cases=len(results), seconds=round(time.perf_counter() - start, 1))
    summary["per_case"] = [vars(r) for r in results]
    write_text_atomic(args.out, json.dumps(summary, indent=1, default=str))
    keys = ("whole_dsc", "lesion_dsc", "macro_f1", "accuracy", "cases", "seconds")
    print(json.dumps({k: summary[k] for k in keys}), summary.get("confusion"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
