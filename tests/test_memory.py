"""Memory sizes, RSS and its peak, the peak monitor on real subprocesses, cgroup limits."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from edgepanc.errors import EdgepancError
from edgepanc.memory import (
    PeakMemoryMonitor,
    SizeError,
    available_memory,
    cgroup_memory,
    current_rss,
    format_size,
    parse_size,
    peak_rss,
)

MB = 2**20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5GB", 1_500_000_000),
        ("2GiB", 2 * 2**30),
        ("512 mb", 512_000_000),
        ("300MiB", 300 * MB),
        ("4kb", 4000),
        ("1KiB", 1024),
        (" 2 TB ", 2 * 10**12),
        ("1024", 1024),
        ("10B", 10),
        (".5KiB", 512),
        ("0.5kib", 512),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "1.5XB", "-1GB", "1,5GB", "1e9", "2 G B", True])
def test_parse_size_rejects_with_a_clear_message(text):
    with pytest.raises(SizeError, match="invalid size") as info:
        parse_size(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EdgepancError)
    assert repr(text) in str(info.value)  # names the offending value
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536 * MB, "1.50 GiB"),
        (3 * 2**40, "3.00 TiB"),
    ],
)
def test_format_size(n_bytes, text):
    assert format_size(n_bytes) == text


def test_format_size_round_trips_through_parse_size():
    for n_bytes in (5 * MB, 7 * 2**30 + 123):
        assert parse_size(format_size(n_bytes).replace(" ", "")) == pytest.approx(n_bytes, rel=1e-2)


def test_rss_helpers_report_this_process():
    rss = current_rss()
    assert rss > 5 * MB  # a Python interpreter with pytest loaded
    assert peak_rss() >= rss * 0.9  # sampled at different moments, allow for pages freed since


def test_peak_rss_remembers_memory_that_was_freed():
    code = """
        from edgepanc.memory import current_rss, peak_rss
        block = b"x" * (120 * 2**20)  # touched, so resident
        del block
        print(peak_rss(), current_rss())
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    )
    peak, current = map(int, out.stdout.split())
    assert peak - current >= 100 * MB


def test_peak_rss_is_not_the_parent_process_peak():
    # Linux carries getrusage's ru_maxrss across fork and exec: a child of a large process
    # would report the parent's peak as its own.
    parent_block = b"y" * (300 * 2**20)  # resident in this (the parent) process
    out = subprocess.run(
        [sys.executable, "-c", "from edgepanc.memory import peak_rss; print(peak_rss())"],
        capture_output=True,
        text=True,
        check=True,
    )
    del parent_block
    assert int(out.stdout) < 200 * MB


ALLOCATE_200MB = "import time; block = b'x' * (200 * 2**20); time.sleep(0.3)"
# A parent that stays small and starts a child that allocates 200 MB.
PARENT_OF_ALLOCATOR = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {ALLOCATE_200MB!r}], check=True)"


def _monitor_peak(code: str, include_children: bool = True) -> PeakMemoryMonitor:
    proc = subprocess.Popen([sys.executable, "-c", code])
    with PeakMemoryMonitor(proc.pid, interval_s=0.01, include_children=include_children) as monitor:
        assert proc.wait(timeout=30) == 0
    return monitor


def test_peak_monitor_measures_a_subprocess_from_outside():
    monitor = _monitor_peak(ALLOCATE_200MB)
    assert monitor.peak_bytes >= 150 * MB
    assert monitor.samples > 3


def test_peak_monitor_counts_children_only_when_asked():
    assert _monitor_peak(PARENT_OF_ALLOCATOR).peak_bytes >= 150 * MB
    assert _monitor_peak(PARENT_OF_ALLOCATOR, include_children=False).peak_bytes < 100 * MB


def test_peak_monitor_stops_by_itself_when_the_process_is_gone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    monitor = PeakMemoryMonitor(proc.pid, interval_s=0.01).start()
    assert monitor.running
    proc.wait(timeout=30)  # reaped: the next sample finds no process
    deadline = time.monotonic() + 5
    while monitor.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not monitor.running
    assert monitor.stop() > 0


def test_cgroup_v2_limit_and_working_set(tmp_path):
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text("600000000\n")
    (tmp_path / "memory.stat").write_text("anon 400000000\ninactive_file 100000000\n")
    assert cgroup_memory(tmp_path) == (2**30, 500_000_000)
    assert available_memory(cgroup_root=tmp_path) <= 2**30 - 500_000_000

    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory(tmp_path) is None


def test_cgroup_v1_limit_and_unlimited(tmp_path):
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("2147483648\n")
    (v1 / "memory.usage_in_bytes").write_text("1000\n")
    assert cgroup_memory(tmp_path) == (2 * 2**30, 1000)

    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_memory(tmp_path) is None
    assert cgroup_memory(tmp_path / "absent") is None


def test_memory_by_stage_script_reports_every_stage_of_a_run(tmp_path) -> None:
    from pathlib import Path

    from runtime_support import make_tiny_bundle, phantom, write_image

    bundle = make_tiny_bundle(tmp_path / "bundle")
    scan = write_image(phantom(), tmp_path / "scan_0000.nii.gz")
    script = Path(__file__).resolve().parents[1] / "scripts" / "memory_by_stage.py"
    done = subprocess.run(
        [sys.executable, str(script), str(scan), "--model", str(bundle), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert (tmp_path / "out" / "scan.nii.gz").is_file()
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[header + 1 :]}
    assert {"read", "preprocess", "fine", "postprocess", "restore", "write"} <= set(rows)
    for stage, (start, peak, end) in rows.items():
        assert 50 < start <= peak and end <= peak, (stage, start, peak, end)
