"""``edgepanc synth``: write a synthetic pancreas CT data set."""

from __future__ import annotations

from pathlib import Path

import click

# The generator (scipy, numpy fields) is imported inside the command: registering the command
# must not slow down `edgepanc run`'s start-up. tests/test_synth.py checks these match the synth.
LAYOUTS = ("quiz", "nnunet")
SIZES = ("quiz", "full")


@click.command("synth")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Data set folder to create.",
)
@click.option(
    "--cases",
    default=60,
    show_default=True,
    type=int,
    help="Labelled cases (train + validation); test cases are added at the real 72/288 ratio.",
)
@click.option(
    "--layout", type=click.Choice(LAYOUTS), default="quiz", show_default=True, help="Folder layout."
)
@click.option(
    "--size",
    type=click.Choice(SIZES),
    default="quiz",
    show_default=True,
    help="quiz: ROI crops round the pancreas; full: 512 x 512 x 200-400 abdominal CTs.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same data set.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Processes generating cases in parallel; the data set is the same for any value.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(
    out: Path,
    cases: int,
    layout: str,
    size: str,
    seed: int,
    overwrite: bool,
    workers: int,
    quiet: bool,
) -> None:
    """Generate CT phantoms with pancreas, lesion and subtype labels."""
    from edgepanc.synth.dataset import SynthConfig, synthesize

    config = SynthConfig(
        out=out,
        cases=cases,
        layout=layout,
        size=size,
        seed=seed,
        overwrite=overwrite,
        progress=not quiet,
        workers=workers,
    )
    records = synthesize(config)
    splits = {s: sum(r["split"] == s for r in records) for s in ("train", "validation", "test")}
    click.echo(
        f"wrote {len(records)} cases to {out} ({layout} layout, {size} size): "
        + ", ".join(f"{v} {k}" for k, v in splits.items())
    )


__all__ = ["synth"]
