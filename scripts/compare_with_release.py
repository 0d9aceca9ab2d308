"""``edgepanc run`` of this tree against the same command of an earlier commit, on one scan.

    git worktree add --detach ../edgepanc-then COMMIT
    python scripts/compare_with_release.py SCAN --model BUNDLE --then ../edgepanc-then \\
        [--rounds 3] [--out compare.json] [flags for today's run, e.g. --backend onnxruntime]

Runs, alternating (then, now, then, now, ...), ``python -m edgepanc run SCAN --model BUNDLE``
with the earlier tree first on ``PYTHONPATH`` (the same interpreter and packages, so only the
code differs) and this tree's ``edgepanc run SCAN --model BUNDLE --no-preview`` (the earlier
runtime drew no preview by default). Reports the median wall time of each whole process, the
ratio, the peak resident memory of each process tree measured from outside, and the agreement
of the two masks (whole-pancreas and lesion Dice). What "today's defaults" meant when an issue
was filed is answered by the commit it was filed at, not by today's code with an option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from edgepanc.io.atomic import write_text_atomic  # noqa: E402

from harness import head_to_head, release_commands  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--then", type=Path, required=True, help="worktree of the earlier commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("compare_runs"))
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    # anything else (e.g. --backend onnxruntime) goes to today's run
    args, now_flags = parser.parse_known_args(argv)
    args.now_flags = [flag for flag in now_flags if flag != "--"]
    outs = {"then": args.work / "then", "now": args.work / "now"}
    commands = release_commands(args.scan, args.model, args.then, outs, args.now_flags)
    result = head_to_head(commands, args.scan, outs, args.rounds)
    figures = {
        "scan": str(args.scan),
        "then_tree": str(args.then),
        "now_flags": args.now_flags,
        "artifact": {k: result.case(k).get("artifact") for k in outs},
        "seconds": {k: [r.seconds for r in v] for k, v in result.runs.items()},
        "median_s": {k: result.median_s(k) for k in outs},
        "speedup": result.speedup("then", "now"),
        "peak_rss_mib": {k: result.peak(k) / 2**20 for k in outs},
        "agreement": result.agreement,
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out is not None:
        write_text_atomic(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
