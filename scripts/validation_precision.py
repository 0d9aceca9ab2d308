"""Validation of a trained run at fp32 against the autocast precision it trained with.

    python scripts/validation_precision.py RUN DATA [--precision bf16|fp16] [--rounds 2]
        [--threads 2]

Loads RUN's weights (``weights.pt``, the bundle's network) and plan, prepares DATA's validation
cases with that plan, and validates them as ``edgepanc train`` does
(:func:`edgepanc.training.validation.validate_cases`) at ``fp32`` and at
:func:`~edgepanc.training.validation.validation_precision` of the recipe's autocast, in turns,
``--rounds`` times. Prints each pass's seconds and metrics. Run it alone on the machine:
docs/measurements/data_set_size.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from edgepanc.blas import blas_on_one_thread
from edgepanc.bundle import load_bundle
from edgepanc.training.dataset import prepare_cases
from edgepanc.training.runner import labelled_cases
from edgepanc.training.validation import summarize_results, validate_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.run)
    # Channels-last, as the training loop holds the network on a CPU (steps.py).
    model = bundle.load_network().to(memory_format=torch.channels_last_3d)
    cases = [c for c in labelled_cases(args.data) if c.split == "validation"]
    prepared = prepare_cases(cases, bundle.plan, "preprocessing")
    print(f"{len(prepared)} validation cases, {torch.get_num_threads()} torch threads")
    with blas_on_one_thread():
        for round_ in range(args.rounds):
            for precision in ("fp32", args.precision):
                start = time.perf_counter()
                results = validate_cases(
                    model, prepared, bundle.plan.patch_size, "cpu", precision=precision
                )
                seconds = time.perf_counter() - start
                summary = summarize_results(results)
                print(
                    f"round {round_ + 1} {precision}: {seconds:.1f} s; whole DSC "
                    f"{summary['whole_dsc']:.4f}, lesion DSC {summary['lesion_dsc']:.4f}, macro F1 "
                    f"{summary['macro_f1']:.4f}"
                )


if __name__ == "__main__":
    main()
