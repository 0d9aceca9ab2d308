"""``edgepanc summarize``: a run folder's tables rebuilt from its case JSONs."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("summarize")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace tables or an overview edgepanc did not write.",
)
def summarize(out_dir: Path, overwrite: bool) -> None:
    """Rebuild subtype_results.csv, statistics.csv and overview.png in OUT_DIR from its finished
    case JSONs: after several `edgepanc run DIR --part K/N --out OUT_DIR` processes (one per
    machine or Slurm array task) wrote into one folder.
    """
    from edgepanc.runtime.summary import summarize as rebuild

    summary = rebuild(out_dir, overwrite=overwrite)
    click.echo(f"{summary.cases} cases: " + ", ".join(str(p) for p in summary.written))
