"""Memory sizes and measurements: parse "1.5GB", read the RSS and its peak, watch a process tree.

Units follow the SI/IEC convention that ``ls``, ``df -H`` and cloud providers use: ``KB``, ``MB``,
``GB``, ``TB`` are powers of 1000 and ``KiB``, ``MiB``, ``GiB``, ``TiB`` powers of 1024, so
``--memory-budget 2GB`` means 2,000,000,000 bytes and ``2GiB`` means 2,147,483,648. Sizes are
printed in IEC units, which is what ``free``, ``top`` and ``nvidia-smi`` report.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from types import TracebackType

import psutil

from edgepanc.errors import EdgepancError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_IEC_STEPS = ("B", "KiB", "MiB", "GiB", "TiB")

# cgroup v1 reports "no limit" as a page-rounded 2**63 - 1; anything this large means unlimited.
_CGROUP_V1_UNLIMITED = 2**60
DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")


class SizeError(EdgepancError, ValueError):
    """A memory size string that cannot be parsed (also a ValueError, for click callbacks)."""


def parse_size(value: str | int) -> int:
    """Bytes in a size such as ``"512MB"``, ``"1.5GB"``, ``"2 GiB"`` or ``"1048576"``.

    Case-insensitive; a bare number is bytes; fractions of a byte are rounded down.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise SizeError(f"invalid size {value}: must not be negative")
        return value
    match = _SIZE_PATTERN.match(str(value))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise SizeError(
            f"invalid size {value!r}: expected a number and a unit such as 512MB, 1.5GB or 2GiB "
            "(B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024)"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n_bytes: int | float) -> str:
    """``1536 * 2**20`` -> ``"1.50 GiB"``; plain bytes below 1 KiB (``"512 B"``)."""
    size = float(n_bytes)
    sign = "-" if size < 0 else ""
    size = abs(size)
    for unit in _IEC_STEPS:
        if size < 1024 or unit == _IEC_STEPS[-1]:
            return f"{sign}{int(size)} B" if unit == "B" else f"{sign}{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def current_rss() -> int:
    """Resident set size of this process, in bytes."""
    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes.

    On Linux the address space's high-water mark (``VmHWM`` in ``/proc/self/status``).
    ``getrusage``'s ``ru_maxrss`` is not used there: Linux carries it across ``fork`` and
    ``exec``, so a run started from a large process (a notebook, pytest holding phantoms)
    reported its parent's peak (1186 MiB for a 483 MiB run under the bench suite). Elsewhere
    ``getrusage`` (bytes on macOS); on Windows the peak working set.
    """
    if sys.platform == "win32":  # pragma: no cover - no Windows CI
        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))
    if sys.platform.startswith("linux"):
        high_water = _linux_high_water_mark()
        if high_water is not None:
            return high_water
    import resource  # POSIX only, hence not at module level

    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(max_rss if sys.platform == "darwin" else max_rss * 1024)


def _linux_high_water_mark() -> int | None:
    """``VmHWM`` of this process in bytes, or None where /proc does not give it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def tree_rss(process: psutil.Process, include_children: bool = True) -> int:
    """RSS of a process plus (optionally) all its descendants, in bytes.

    Pages shared between processes count once per process, so a forked tree reads high: the
    safe side for a budget. Children that exit while being read are skipped.
    """
    total = process.memory_info().rss
    if include_children:
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return total


class PeakMemoryMonitor:
    """Samples a process tree's RSS in a background thread and keeps the peak.

    Measures another process from outside (a benchmark's subprocess, a worker pool), or this
    one when ``pid`` is None. Sampling stops when the process exits; ``peak_bytes`` remains.
    Spikes shorter than ``interval_s`` can be missed, so keep it well below the work's length::

        proc = subprocess.Popen([...])
        with PeakMemoryMonitor(proc.pid) as monitor:
            proc.wait()
        print(format_size(monitor.peak_bytes))
    """

    def __init__(
        self, pid: int | None = None, interval_s: float = 0.01, include_children: bool = True
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.include_children = include_children
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> bool:
        """Take one sample now; False once the process is gone."""
        try:
            rss = tree_rss(self.process, self.include_children)
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited (or a zombie)
            return False
        self.peak_bytes = max(self.peak_bytes, rss)
        self.samples += 1
        return True

    def _run(self) -> None:
        while self.sample() and not self._stop.wait(self.interval_s):
            pass

    @property
    def running(self) -> bool:
        """True while the sampling thread runs (it ends on stop() or when the process exits)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> PeakMemoryMonitor:
        if self._thread is not None:
            raise RuntimeError("PeakMemoryMonitor already started")
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (one last sample if the process still runs); return the peak in bytes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return self.peak_bytes

    def __enter__(self) -> PeakMemoryMonitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def cgroup_memory(root: str | Path = DEFAULT_CGROUP_ROOT) -> tuple[int, int] | None:
    """``(limit, working_set)`` in bytes of this container's cgroup (v2, else v1); None if unlimited.

    psutil reports the host's memory; inside a container with a memory limit, the limit is what
    decides when the kernel kills us. The working set is usage minus inactive file cache, which
    the kernel reclaims before it kills anything (the measure kubelet uses too).
    """
    root = Path(root)
    layouts = (
        # cgroup v2: files at the root, "max" for no limit
        (root / "memory.max", root / "memory.current", root / "memory.stat", "inactive_file"),
        # cgroup v1: a memory/ controller folder, a huge number for no limit
        (
            root / "memory" / "memory.limit_in_bytes",
            root / "memory" / "memory.usage_in_bytes",
            root / "memory" / "memory.stat",
            "total_inactive_file",
        ),
    )
    for limit_file, usage_file, stat_file, inactive_key in layouts:
        try:
            limit_text = limit_file.read_text().strip()
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max":
            return None
        try:
            limit = int(limit_text)
        except ValueError:
            continue
        if limit >= _CGROUP_V1_UNLIMITED:
            return None
        inactive = _read_stat(stat_file).get(inactive_key, 0)
        return limit, max(usage - inactive, 0)
    return None


def _read_stat(path: Path) -> dict[str, int]:
    """``key value`` lines of a cgroup ``memory.stat`` file; empty if unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    stats: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stats[key] = int(value)
    return stats


def total_memory(cgroup_root: str | Path = DEFAULT_CGROUP_ROOT) -> int:
    """Physical memory in bytes, capped by a container's cgroup limit."""
    total = psutil.virtual_memory().total
    cgroup = cgroup_memory(cgroup_root)
    return min(total, cgroup[0]) if cgroup else total


def available_memory(cgroup_root: str | Path = DEFAULT_CGROUP_ROOT) -> int:
    """Memory in bytes that can be used without swapping, capped by a cgroup limit's headroom."""
    available = psutil.virtual_memory().available
    cgroup = cgroup_memory(cgroup_root)
    if cgroup:
        limit, working_set = cgroup
        available = min(available, max(limit - working_set, 0))
    return available
