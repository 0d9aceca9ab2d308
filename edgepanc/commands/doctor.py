"""``edgepanc doctor``: report what this machine offers (CUDA, TensorRT, ONNX Runtime, sensors)."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Report Python, torch/CUDA, CPU features, ONNX Runtime, TensorRT, GPUs, sensors, memory."""
    from edgepanc.doctor import collect_report, format_report

    report = collect_report()
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report), nl=as_json)
