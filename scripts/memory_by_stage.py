"""Where the memory of one ``edgepanc run`` goes: resident memory per runtime stage.

    python scripts/memory_by_stage.py SCAN --model BUNDLE --out OUT [other edgepanc run flags]

Runs ``edgepanc run`` in this process with a thread sampling the resident set size every 5 ms
and prints, for each stage of the case JSON's ``timings_s`` (read, preprocess, coarse, fine,
postprocess, restore, write), the RSS when it started, the highest RSS seen during it and the
RSS when it ended. The case JSON's ``peak_memory_bytes`` says how high a run went; this says
which stage took it there and what it holds (e.g. reading a .nii.gz holds the image twice at
its peak). Sampling can miss a spike shorter than 5 ms, so the stage peaks are lower bounds.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

import psutil

from edgepanc.runtime import pipeline

SAMPLE_S = 0.005
MIB = 2**20


class RssSampler:
    """Highest RSS of this process since the last :meth:`reset`, sampled in a daemon thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.highest = self.process.memory_info().rss
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()

    def reset(self) -> int:
        self.highest = self.process.memory_info().rss
        return self.highest

    def _sample(self) -> None:
        while True:
            self.highest = max(self.highest, self.process.memory_info().rss)
            time.sleep(SAMPLE_S)


def main(argv: list[str]) -> int:
    sampler = RssSampler()
    rows: list[tuple[str, int, int, int]] = []
    timed = pipeline.StageTimer.__call__

    @contextlib.contextmanager
    def traced(self: pipeline.StageTimer, stage: str) -> Iterator[None]:
        start = sampler.reset()
        with timed(self, stage):
            yield
        end = sampler.process.memory_info().rss
        rows.append((stage, start, max(sampler.highest, end), end))

    pipeline.StageTimer.__call__ = traced  # type: ignore[method-assign]
    from edgepanc.cli import main as cli

    try:
        cli(["run", *argv], standalone_mode=False)
    finally:
        print(f"{'stage':<12} {'start MiB':>10} {'peak MiB':>10} {'end MiB':>10}")
        for stage, start, peak, end in rows:
            print(f"{stage:<12} {start / MIB:>10.0f} {peak / MIB:>10.0f} {end / MIB:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
