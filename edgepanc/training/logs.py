"""Run logs: ``metrics.jsonl`` and ``metrics.csv`` (one row per epoch), ``train.log``, ``curves.png``.

The metric files are rewritten whole and atomically after every epoch (they are small), so a
killed run never leaves a half line, and a resumed run drops the rows of epochs it replays.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgepanc.io.atomic import atomic_path, write_text_atomic

# The data set's targets, drawn as horizontal lines on the curves.
TARGETS = {"whole_dsc": 0.91, "lesion_dsc": 0.31, "macro_f1": 0.70}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _scalar_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    # Union of keys in first-seen order; nested values (confusion matrix) stay in the JSON only.
    columns: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in columns and not isinstance(value, list | dict):
                columns.append(key)
    return columns


def records_to_csv(records: Sequence[dict[str, Any]]) -> str:
    columns = _scalar_columns(records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: record.get(k, "") for k in columns})
    return buffer.getvalue()


def write_metrics(run_dir: Path, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` and ``metrics.csv`` from all epoch records."""
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_text_atomic(run_dir / "metrics.csv", records_to_csv(records))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _validation_text(record: dict[str, Any]) -> str:
    text = (
        f"; validation whole DSC {record['whole_dsc']:.4f}, lesion DSC "
        f"{record['lesion_dsc']:.4f}, macro F1 {record['macro_f1']:.4f}, "
        f"accuracy {record['accuracy']:.4f}, score {record['combined_score']:.4f}"
    )
    if "selection_combined_score" in record:
        text += f"; selection score {record['selection_combined_score']:.4f} (it chooses)"
    return text


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The log line of an epoch's row (losses, lr, time; the validation when it ran).

    Example::

        >>> epoch_line({"epoch": 1, "loss": 1.0, "seg_loss": 0.5, "cls_loss": 1.0, "lr": 0.003,
        ...             "seconds": 20.0, "pause_s": 0.0}, 50)
        'epoch 1/50: loss 1.0000 (seg 0.5000, cls 1.0000), lr 3.00e-03, 20 s, thermal pauses 0 s'
    """
    text = (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f} "
        f"(seg {record['seg_loss']:.4f}, cls {record['cls_loss']:.4f}), lr {record['lr']:.2e}, "
        f"{record['seconds']:.0f} s, thermal pauses {record['pause_s']:.0f} s"
    )
    return text + _validation_text(record) if "whole_dsc" in record else text


def refit_line(record: dict[str, Any]) -> str:
    """The log line of the head refit's row (tiles, losses, time; the validation when it ran).

    Example::

        >>> refit_line({"refit_tiles": 40, "refit_cases": 9, "refit_loss_before": 1.0,
        ...             "refit_loss_after": 0.5, "refit_train_accuracy": 0.9, "seconds": 9.0})
        'head refit on 40 tiles of 9 training cases: loss 1.0000 -> 0.5000, training-case accuracy 0.9000, 9 s'
    """
    text = (
        f"head refit on {record['refit_tiles']} tiles of {record['refit_cases']} training "
        f"cases: loss {record['refit_loss_before']:.4f} -> {record['refit_loss_after']:.4f}, "
        f"training-case accuracy {record['refit_train_accuracy']:.4f}, {record['seconds']:.0f} s"
    )
    return text + _validation_text(record) if "macro_f1" in record else text


def attach_file_log(run_dir: Path, logger: logging.Logger | None = None) -> logging.Handler:
    """Send ``logger`` (the root logger by default) to ``run_dir/train.log`` as well.

    Example::

        >>> handler = attach_file_log(Path("work/a"))
    """
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    target = logger or logging.getLogger()
    target.addHandler(handler)
    if target.level > logging.INFO or target.level == logging.NOTSET:
        target.setLevel(logging.INFO)
    return handler


class _Holding(logging.Handler):
    """Keeps the records it is given while ``active``, for a log file that does not exist yet."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.active = True

    def emit(self, record: logging.LogRecord) -> None:
        if self.active:
            self.records.append(record)


class RunLog:
    """``train.log`` for run folders that are created only once everything was checked.

    Until :meth:`open` the records are held in memory, so a run refused before it starts writes
    nothing; each file opened gets the held records first (every fold's log names the data set's
    warnings), then the records until :meth:`close_file`.

    Example::

        >>> run_log = RunLog()
        >>> run_log.open(Path("work/a"))  # train.log with everything logged so far
        >>> run_log.close()
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger()
        self.holding = _Holding()
        self.file: logging.Handler | None = None
        self.logger.addHandler(self.holding)
        if self.logger.level > logging.INFO or self.logger.level == logging.NOTSET:
            self.logger.setLevel(logging.INFO)

    def open(self, run_dir: Path) -> None:
        """Write ``run_dir/train.log``: the held records, then everything logged until closed."""
        self.close_file()
        self.file = attach_file_log(run_dir, self.logger)
        for record in self.holding.records:
            self.file.handle(record)
        self.holding.active = False

    def close_file(self) -> None:
        """Stop writing the current file (records are held again until the next :meth:`open`)."""
        if self.file is not None:
            self.logger.removeHandler(self.file)
            self.file.close()
            self.file = None
        self.holding.active = True

    def close(self) -> None:
        """Detach from the logger."""
        self.close_file()
        self.logger.removeHandler(self.holding)


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Losses (left) and validation metrics with the targets (right) against epoch; the
    validation after ``--head-refit`` as stars at the epoch it refitted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    # Rows with a "phase" (the head refit after the last epoch) are not epochs of training.
    epochs_only = [r for r in records if "phase" not in r]
    epochs = [r["epoch"] for r in epochs_only]
    for key in ("loss", "seg_loss", "cls_loss"):
        ax_loss.plot(epochs, [r.get(key) for r in epochs_only], label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend()
    validated = [r for r in epochs_only if "whole_dsc" in r]
    refitted = [r for r in records if r.get("phase") == "head_refit" and "whole_dsc" in r]
    colours = {"whole_dsc": "tab:blue", "lesion_dsc": "tab:orange", "macro_f1": "tab:green"}
    for key, target in TARGETS.items():
        ax_metric.plot(
            [r["epoch"] for r in validated],
            [r[key] for r in validated],
            marker="o",
            color=colours[key],
            label=key,
        )
        if refitted:
            ax_metric.scatter(
                [r["epoch"] for r in refitted],
                [r[key] for r in refitted],
                marker="*",
                s=120,
                color=colours[key],
                label=f"{key} after head refit",
            )
        ax_metric.axhline(target, color=colours[key], linestyle="--", linewidth=1)
    ax_metric.set_ylim(0, 1)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation (dashed: target)")
    ax_metric.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
