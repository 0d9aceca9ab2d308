"""Errors that reach the user as one clear line.

Every problem with user input is raised as an :class:`EdgepancError` subclass whose message
already names the file and what is wrong; the CLI prints ``error: <message>`` and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class EdgepancError(Exception):
    """Base class: the message is one line, meant for the user."""

    exit_code = 2


class InputError(EdgepancError):
    """A file or folder given by the user cannot be used."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DatasetError(InputError):
    """A data set failed discovery or its integrity check."""


class BudgetError(EdgepancError):
    """A memory or temperature budget cannot be met."""


class BundleError(InputError):
    """A model bundle is missing, incomplete or of the wrong kind."""
