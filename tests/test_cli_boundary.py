"""The command line's error boundary: whatever goes wrong, one readable line and a non-zero exit."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import pytest

from edgepanc.cli import main
from edgepanc.commands.params import FiniteFloat

from runtime_support import make_tiny_bundle, phantom, run_cli, write_image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def _broken_report(exc: BaseException):
    def collect_report() -> dict:
        raise exc

    return collect_report


@pytest.mark.parametrize(
    "exc, code, words",
    [
        (RuntimeError("the tensor exploded"), 1, ["internal error", "RuntimeError", "exploded"]),
        (
            OSError(5, "Input/output error", "/data/scan.nii.gz"),
            2,
            ["/data/scan.nii.gz", "Input/output"],
        ),
        (PermissionError(13, "Permission denied", "/root/x"), 2, ["Permission denied"]),
        (MemoryError(), 1, ["out of memory"]),
        (KeyError("spacing"), 1, ["internal error", "KeyError"]),
        (OSError(28, "No space left on device"), 2, ["No space left"]),
    ],
)
def test_any_exception_becomes_one_line_with_the_traceback_in_a_log(
    exc: BaseException,
    code: int,
    words: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr("edgepanc.doctor.collect_report", _broken_report(exc))
    result = run_cli("doctor")
    assert result.exit_code == code
    line = _one_error_line(result)
    for word in words:
        assert word in line, line
    logs = list(tmp_path.glob("edgepanc-*.log"))
    if isinstance(exc, OSError) and exc.filename:  # the file and the reason are enough to act on
        assert logs == [] and line == f"error: {exc.filename}: {exc.strerror}"
    else:  # anything else points at the log holding its traceback
        assert len(logs) == 1 and str(logs[0]) in line
        text = logs[0].read_text()
        assert "Traceback" in text and "collect_report" in text and type(exc).__name__ in text


def test_debug_flag_prints_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr("edgepanc.doctor.collect_report", _broken_report(ValueError("bad")))
    result = run_cli("--debug", "doctor")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "collect_report" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_keyboard_interrupt_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgepanc.doctor.collect_report", _broken_report(KeyboardInterrupt()))
    result = run_cli("doctor")
    assert result.exit_code == 130
    assert "interrupted" in _one_error_line(result)


def test_usage_errors_stay_with_click() -> None:
    result = run_cli("run")  # missing SCAN: click's usage message, exit 2, not an internal error
    assert result.exit_code == 2 and "Usage" in result.stderr and "internal" not in result.stderr


@pytest.mark.parametrize("kind", ["dev_null", "fifo"])
def test_run_on_device_or_fifo_gives_one_line_and_writes_nothing(
    kind: str, tmp_path: Path, bundle: Path
) -> None:
    if kind == "fifo":
        scan = tmp_path / "scan_0000.nii.gz"
        os.mkfifo(scan)
    else:
        scan = Path("/dev/null")
    out = tmp_path / "out"
    result = run_cli("run", scan, "--model", bundle, "--out", out)
    assert result.exit_code == 2
    assert str(scan) in _one_error_line(result)
    assert not out.exists()


# --- float options ------------------------------------------------------------------------------


def _float_options(
    group: click.Group = main, prefix: str = ""
) -> list[tuple[str, click.Parameter]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):  # subcommands of subcommands too
            found.extend(_float_options(command, f"{prefix}{name} "))
        for param in command.params:
            if isinstance(param.type, click.types.FloatParamType):
                found.append((f"{prefix}{name} {param.opts[0]}", param))
    return found


def test_every_float_option_is_finite() -> None:
    options = _float_options()
    assert {"run --max-temp", "run --step", "quantize --prune"} <= {
        name for name, _ in options
    }
    for name, param in options:
        assert isinstance(param.type, FiniteFloat), name
        for bad in ("nan", "inf", "-inf", "NaN"):
            with pytest.raises(click.BadParameter):
                param.type.convert(bad, param, None)


def test_max_temp_nan_refused(tmp_path: Path, bundle: Path) -> None:
    scan = write_image(phantom(shape_zyx=(20, 24, 28)), tmp_path / "in" / "ok_0000.nii.gz")
    out = tmp_path / "out"
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--max-temp", "nan")
    assert result.exit_code == 2
    assert "--max-temp" in result.stderr and "finite" in result.stderr
    assert not out.exists()
