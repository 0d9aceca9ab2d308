"""Atomic writes leave either the old file or the complete new one, never a partial file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from edgepanc.io.atomic import atomic_path, write_json_atomic, write_text_atomic


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_failure_keeps_old_content_and_removes_temporary(tmp_path):
    target = tmp_path / "mask.nii.gz"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz")  # format chosen by extension must survive
        tmp.write_text("partial")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]


def test_written_file_follows_umask_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_a_command_stopped_with_sigterm_leaves_nothing_behind(tmp_path):
    """`kill` or `timeout` mid-run: the staging folder goes, no partial output appears."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "data"
    command = [sys.executable, "-m", "edgepanc", "synth", "--out", str(out), "--cases", "40"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # wait until the first case is being written into the staging folder
        while not any(p.is_file() for p in tmp_path.rglob("*")):
            assert process.poll() is None, "synth ended before it could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()
    assert list(tmp_path.iterdir()) == []


def test_an_in_process_command_gives_back_the_sigterm_handler() -> None:
    import signal

    from click.testing import CliRunner

    from edgepanc.cli import main

    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    assert signal.getsignal(signal.SIGTERM) is before
