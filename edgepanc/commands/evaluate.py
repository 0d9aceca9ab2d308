"""``edgepanc evaluate``: score a run's output folder against a data set's reference masks."""

from __future__ import annotations

from pathlib import Path

import click


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
    help="Summary JSON (default: PRED/evaluation.json); per-case CSV beside it.",
)
def evaluate(pred_dir: Path, gt_root: Path, split: str, out_path: Path | None) -> None:
    """Whole-pancreas and lesion DSC, subtype macro F1 and accuracy, per case and overall."""
    from edgepanc.errors import InputError
    from edgepanc.evaluation.evaluate import evaluate_predictions, format_summary, write_evaluation

    if not pred_dir.is_dir():
        raise InputError(pred_dir, "no such prediction folder")
    scores, summary = evaluate_predictions(pred_dir, gt_root, split)
    summary_path = out_path or pred_dir / "evaluation.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    cases_path = write_evaluation(scores, summary, summary_path)
    click.echo(format_summary(summary))
    click.echo(f"wrote {summary_path} and {cases_path}")
