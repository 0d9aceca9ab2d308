"""CLI helpers for the hostile-input tests: invoke ``edgepanc`` in-process, read its one line."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from edgepanc.cli import main


def cli(*args: str | Path) -> Result:
    """``edgepanc ARGS`` in-process; exceptions are kept in the result, not raised."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result: Result) -> str:
    """The refusal: exit 2, exactly one ``error:`` line, no traceback, no advice to unpickle."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output and "weights_only" not in result.output
    return errors[0]
