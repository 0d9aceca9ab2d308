"""Run the bench suites and regenerate bench/RESULTS.md and bench/results.png.

    python scripts/bench_results.py [--bundle BUNDLE] [--rounds N] [--render-only]

``--bundle`` (or ``$EDGEPANC_BENCH_BUNDLE``) names the model bundle to measure: a trained one,
ideally quantized, gives the meaningful figures; without it the suites use the tiny preset at
random weights (see bench/README.md). ``--render-only`` re-renders from bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from edgepanc.io.atomic import write_text_atomic  # noqa: E402

from results import RESULTS_ENV, render_chart, render_markdown  # noqa: E402

RESULTS_JSON = BENCH / "results.json"


def run_suites(bundle: str | None, rounds: int, pytest_args: list[str]) -> int:
    """All bench suites (not only the gates), recording into bench/results.json."""
    env = dict(os.environ, **{RESULTS_ENV: str(RESULTS_JSON), "EDGEPANC_BENCH_ROUNDS": str(rounds)})
    if bundle:
        env["EDGEPANC_BENCH_BUNDLE"] = str(Path(bundle).resolve())
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        str(BENCH),
        "--benchmark-disable-gc",
        *pytest_args,
    ]
    return subprocess.call(cmd, cwd=ROOT, env=env)


def render() -> None:
    results = json.loads(RESULTS_JSON.read_text())
    write_text_atomic(BENCH / "RESULTS.md", render_markdown(results))
    render_chart(results, BENCH / "results.png")
    print(f"wrote {BENCH / 'RESULTS.md'} and {BENCH / 'results.png'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=os.environ.get("EDGEPANC_BENCH_BUNDLE"))
    parser.add_argument("--rounds", type=int, default=3, help="repetitions per measurement")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k quiz")
    args = parser.parse_args()
    status = 0
    if not args.render_only:
        # a failing gate is a result to publish, not a reason to keep the old tables
        status = run_suites(args.bundle, args.rounds, args.pytest_args)
    if not RESULTS_JSON.is_file():
        print(f"no results at {RESULTS_JSON}", file=sys.stderr)
        return 2
    render()
    return status


if __name__ == "__main__":
    sys.exit(main())
