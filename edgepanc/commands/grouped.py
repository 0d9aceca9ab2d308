"""A click command whose ``--help`` lists its options in named groups (data, hardware, ...)."""

from __future__ import annotations

from typing import Any

import click


class GroupedOption(click.Option):
    """An option that names the help group it is listed under.

    Example: ``@click.option("--epochs", cls=GroupedOption, group="schedule", type=int)``.
    """

    def __init__(self, *args: Any, group: str = "other", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """Lists options by :attr:`GroupedOption.group`, groups in order of first appearance.

    Example: ``@click.command(cls=GroupedCommand)``.
    """

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            group = getattr(param, "group", "other")
            groups.setdefault(group, []).append(record)
        for group, records in groups.items():
            with formatter.section(f"Options: {group}"):
                formatter.write_dl(records)
