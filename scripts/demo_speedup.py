"""Time `edgepanc run` (optimised, default settings) against the baseline on one scan.

Both run as separate processes, alternately, so start-up and model loading count for both; the
speed-up is the ratio of median wall times (the same rule as the bench gates).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgepanc.runtime.baseline import speedup_gate


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scan", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    baseline, optimised = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            out = Path(tmp) / str(i)
            baseline.append(
                _timed(
                    [
                        sys.executable,
                        "-m",
                        "edgepanc.runtime.baseline",
                        str(args.scan),
                        "--model",
                        str(args.model),
                        "--out",
                        str(out / "baseline"),
                    ]
                )
            )
            optimised.append(
                _timed(
                    [
                        sys.executable,
                        "-m",
                        "edgepanc",
                        "run",
                        str(args.scan),
                        "--model",
                        str(args.model),
                        "--out",
                        str(out / "run"),
                    ]
                )
            )
    gate = speedup_gate(baseline, optimised, min_ratio=1.10)
    print(f"speed-up over the baseline on {args.scan.name}: {gate.message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
