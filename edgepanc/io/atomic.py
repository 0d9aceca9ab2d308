"""Atomic writes: write to a temporary file in the destination folder, then rename.

A crash or a failed write never leaves a partial file under the final name, and the rename is
atomic on POSIX file systems because source and destination share a folder. A SIGKILL can leave
the temporary behind: it is hidden and named after its target and its writer's process
(:data:`TEMPORARY_NAME`), so that :func:`remove_stale_temporaries` can tell it from anything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

# ".<target>.<writer pid>.<8 random characters>.tmp<target's suffixes>"; files written before the
# pid was part of the name lack it.
TEMPORARY_NAME = re.compile(
    r"^\.(?P<target>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp(?:\.[A-Za-z0-9]+)*$"
)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    ``suffix`` defaults to the full suffix of ``path`` (``.nii.gz`` stays ``.nii.gz``) so that
    libraries that choose a format by extension (SimpleITK, matplotlib) write the right one.
    """
    path = Path(path)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
    os.chmod(tmp_path, 0o666 & ~_current_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries a killed writer left in ``folder``; return what was removed.

    Only files named like :func:`atomic_path`'s temporaries, older than this process, whose
    writer is gone (its pid is not running, or runs a process started after the file was
    written) go; nothing else is touched, and a live writer's file stays.

    Example: ``remove_stale_temporaries("masks")`` -> ``[Path("masks/.ct.nii.gz.4242.k3j_a9zq.tmp.nii.gz")]``.
    """
    started = _process_start()
    removed: list[Path] = []
    for path in Path(folder).iterdir():
        match = TEMPORARY_NAME.match(path.name)
        if match is None or path.is_symlink() or not path.is_file():
            continue
        written = path.stat().st_mtime
        if written >= started or _writer_alive(match.group("pid"), written):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _process_start() -> float:
    started = psutil.Process().create_time()
    with contextlib.suppress(AttributeError, OSError):  # CLOCK_BOOTTIME: Linux only
        # psutil adds the boot time in whole seconds, up to 1 s early; the boot clock is exact
        started += time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) - psutil.boot_time()
    return started


def _writer_alive(pid: str | None, written: float) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(int(pid)).create_time() <= written
    except (psutil.Error, ValueError, OverflowError):
        return False


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, paths: the common non-JSON types in our reports
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
