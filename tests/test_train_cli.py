"""``edgepanc train --help``: the options a user decides, few enough to read, each explained."""

from __future__ import annotations

import click
from click.testing import CliRunner

from edgepanc.cli import main

MAX_OPTIONS = 20
# The recipe's knobs: set in a recipe or with --set, no longer flags of their own.
RECIPE_KNOBS = (
    "--lr",
    "--epochs",
    "--patch-size",
    "--target-spacing",
    "--batch-size",
    "--teacher-forcing",
    "--head-statistics",
    "--lesion-fraction",
    "--lesion-dice",
    "--cls-weight",
    "--preset",
    "--amp",
)


def test_train_help_lists_at_most_twenty_options_each_with_help() -> None:
    command = main.commands["train"]
    context = click.Context(command, info_name="train")
    records = [p.get_help_record(context) for p in command.get_params(context)]
    records = [r for r in records if r is not None]
    assert 10 <= len(records) <= MAX_OPTIONS, [r[0] for r in records]
    for names, text in records:
        assert text.strip(), f"{names} has no help"
    shown = CliRunner().invoke(main, ["train", "--help"])
    assert shown.exit_code == 0
    listed = [names.split()[0].rstrip(",") for names, _ in records]
    for name in listed:
        assert name in shown.output
    for group in ("data and run folder", "recipe", "hardware", "schedule"):
        assert f"Options: {group}" in shown.output
    for knob in RECIPE_KNOBS:
        assert knob not in listed, f"{knob} is a recipe value: --set"


def test_a_recipe_knob_given_as_a_flag_points_nowhere_but_set_works(tmp_path) -> None:
    run = CliRunner()
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--recipe", "demo"]
    assert run.invoke(main, [*base, "--lr", "0.01", "--print-config"]).exit_code == 2
    printed = run.invoke(main, [*base, "--set", "lr=0.01", "--print-config"])
    assert printed.exit_code == 0, printed.output
    assert "lr = 0.01" in printed.output
