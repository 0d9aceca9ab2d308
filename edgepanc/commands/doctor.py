"""``edgepanc doctor``: report what this machine offers (CUDA, TensorRT, ONNX Runtime, sensors)."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Report Python, torch/CUDA, CPU features, ONNX Runtime, TensorRT, GPUs, sensors, memory;
    end with the commands recommended here (the training recipe, the run backend)."""
    from edgepanc.doctor import collect_report, format_report, run_probe

    report = collect_report()
    # Last, so that the report ends with what to type here.
    report["recommended"] = run_probe(_recommended)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report), nl=as_json)


def _recommended() -> dict[str, str]:
    """The train command with the recipe this machine gets, the run command with its backend."""
    from edgepanc.backends.selection import available_backends
    from edgepanc.recipes.machine import Machine, recommended_commands

    return recommended_commands(Machine.probe(), available_backends())
