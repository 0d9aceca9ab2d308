"""``edgepanc evaluate``: score a run's output folder against a data set's reference masks."""

from __future__ import annotations

from pathlib import Path

import click

from edgepanc.commands.params import FiniteFloat


@click.command("evaluate")
@click.option(
    "--pred",
    "pred_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder of `edgepanc run`.",
)
@click.option(
    "--gt",
    "gt_root",
    required=True,
    type=click.Path(path_type=Path),
    help="Data set root (quiz or nnU-Net layout).",
)
@click.option(
    "--split",
    default="validation",
    show_default=True,
    type=click.Choice(["train", "validation", "test", "all"]),
    help="Which labelled cases to score.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Summary JSON (default: PRED/evaluation.json); per-case CSV and pictures beside it.",
)
@click.option(
    "--nsd-tolerance",
    "nsd_tolerance_mm",
    type=FiniteFloat(0, 100, min_open=True),
    default=2.0,
    show_default=True,
    help="Normalised surface Dice: how far (mm) a boundary may be off and still count as right.",
)
def evaluate(
    pred_dir: Path, gt_root: Path, split: str, out_path: Path | None, nsd_tolerance_mm: float
) -> None:
    """Whole-pancreas and lesion DSC, HD95 and normalised surface Dice, lesions found and missed
    by size, subtype macro F1 and accuracy; per case and overall, with a confusion-matrix and a
    per-case picture."""
    from edgepanc.errors import InputError
    from edgepanc.evaluation.evaluate import evaluate_predictions, format_summary, write_evaluation

    if not pred_dir.is_dir():
        raise InputError(pred_dir, "no such prediction folder")
    scores, summary = evaluate_predictions(pred_dir, gt_root, split, nsd_tolerance_mm)
    summary_path = out_path or pred_dir / "evaluation.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    written = write_evaluation(scores, summary, summary_path)
    click.echo(format_summary(summary))
    click.echo(f"wrote {', '.join(str(p) for p in written)}")
