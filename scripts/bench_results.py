"""Run the bench suites and regenerate bench/RESULTS.md and bench/results.png.

    python scripts/bench_results.py [--bundle BUNDLE] [--rounds N] [--render-only]
    python scripts/bench_results.py --merge PARTIAL.json

``--merge`` folds the records of a separate session (one suite run with
``EDGEPANC_BENCH_RESULTS=PARTIAL.json``, e.g. a long peer run) into bench/results.json, replacing
the records they re-measure, and re-renders.

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


# String fields that are verdicts or prose, not part of what a record measures.
_NOT_IDENTITY = frozenset({"figure", "requirement", "description"})


def record_identity(record: dict) -> tuple:
    """What a record is a measurement of: its string fields (peer, case, backend, path, ...)."""
    return tuple(
        sorted((k, v) for k, v in record.items() if isinstance(v, str) and k not in _NOT_IDENTITY)
    )


def merge_results(results: dict, partial: dict) -> dict:
    """``results`` with ``partial``'s records added, each replacing the one it re-measures."""
    merged = {"machine": results.get("machine", partial.get("machine")), "sections": {}}
    merged["sections"] = {k: list(v) for k, v in results.get("sections", {}).items()}
    for section, records in partial.get("sections", {}).items():
        kept = merged["sections"].setdefault(section, [])
        for record in records:
            kept[:] = [r for r in kept if record_identity(r) != record_identity(record)]
            kept.append(record)
    return merged


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
    parser.add_argument("--merge", type=Path, help="records of a separate bench session to fold in")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k quiz")
    args = parser.parse_args()
    status = 0
    if args.merge:
        from edgepanc.io.atomic import write_json_atomic

        results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
        write_json_atomic(RESULTS_JSON, merge_results(results, json.loads(args.merge.read_text())))
    elif not args.render_only:
        # a failing gate is a result to publish, not a reason to keep the old tables
        status = run_suites(args.bundle, args.rounds, args.pytest_args)
    if not RESULTS_JSON.is_file():
        print(f"no results at {RESULTS_JSON}", file=sys.stderr)
        return 2
    render()
    return status


if __name__ == "__main__":
    sys.exit(main())
