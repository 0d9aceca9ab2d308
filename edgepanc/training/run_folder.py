"""The run folder's rules: which ``--out`` a run may use, and that a run never started leaves nothing.

A new or empty ``--out`` starts a run; a non-empty one is refused unless ``--resume`` is given and
it holds a run of the same experiment (same ``config.identity()``) with a ``last.pt``. Nothing is
ever overwritten otherwise. A run has started once it wrote its first checkpoint (``last.pt``,
before the first step): until then a failure removes what the run created in the folder, so a
plain rerun or a fixed command is not refused by a folder the failed run filled.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgepanc.errors import InputError
from edgepanc.training.config import TrainConfig

CHECKPOINT_NAME = "last.pt"


def check_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """Refuse a folder that is not empty, unless it is a resumable run of the same experiment.

    Example::

        >>> check_run_dir(Path("work/new"), config)  # a new or empty folder passes
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(run_dir, "--out exists and is not a folder")
    existing = run_dir.is_dir() and any(run_dir.iterdir())
    if not config.resume:
        if existing:
            raise InputError(
                run_dir,
                "run folder exists and is not empty; pass --resume to continue it, "
                "or choose a new --out (nothing is overwritten)",
            )
        return
    saved_path = run_dir / "config.json"
    if not saved_path.is_file() or not (run_dir / CHECKPOINT_NAME).is_file():
        raise InputError(
            run_dir, "--resume given, but this folder holds no run to resume (config.json, last.pt)"
        )
    try:
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(saved_path, f"not a training configuration ({exc})") from None
    if saved.identity() != config.identity():
        ours, theirs = config.to_dict(), saved.to_dict()
        differing = sorted(
            k
            for k, v in ours.items()
            if k in theirs and theirs[k] != v and k not in ("data", "out", "resume")
        )
        raise InputError(
            run_dir,
            "--resume given, but the run was started with different settings: "
            + ", ".join(f"{k}={theirs[k]!r}" for k in differing),
        )


def has_started(folder: Path) -> bool:
    """Whether a run (or any fold of one) under ``folder`` wrote its first checkpoint."""
    return folder.is_dir() and any(folder.rglob(CHECKPOINT_NAME))


@contextmanager
def run_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` (with its parents) for a run; undo that if the run fails unstarted.

    On any exception before :func:`has_started`, the entries the block created in ``folder`` are
    removed, and so are ``folder`` and the parents this call created; what was there before is
    never touched. After the first checkpoint everything stays, for ``--resume``.

    Example::

        >>> with run_folder(Path("work/a")) as out:
        ...     trainer.fit()
    """
    first_created = _first_missing(folder)
    before = set(folder.iterdir()) if folder.is_dir() else set()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if not has_started(folder):
            if first_created is not None:
                shutil.rmtree(first_created, ignore_errors=True)
            else:
                for entry in set(folder.iterdir()) - before:
                    _remove(entry)
        raise


def _first_missing(folder: Path) -> Path | None:
    # The outermost of folder and its parents that does not exist yet (None: folder exists).
    missing = None
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            return missing
        missing = path
    return missing


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
