"""Speed and memory gates: the short CI run (``pytest bench -m gate``).

For each phantom (quiz size, and 512 x 512 x 300) the baseline and ``edgepanc run`` run as
separate processes, alternating, in the same session; the gate is the ratio of median wall
times (>= 1.10x, the data set's target "at least 10% faster than the unoptimised baseline"). The
same optimised runs give the peak resident memory, measured from outside, checked against the
budget they were given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepanc.memory import format_size, parse_size
from edgepanc.runtime.baseline import speedup_gate

from harness import (
    GATE_LINES,
    MEMORY_BUDGET,
    BenchCase,
    TimedRun,
    alternate,
    baseline_command,
    optimised_command,
    rounds,
)
from results import Recorder, Spread

MIN_SPEEDUP = 1.10
CASES = ("quiz", "full")


@pytest.fixture(scope="module")
def gate_runs(request: pytest.FixtureRequest, bench_bundle, bench_dir: Path, recorder: Recorder):
    """Alternating baseline / optimised runs per case, made once and shared by the gates."""
    cache: dict[str, dict[str, list[TimedRun]]] = {}

    def runs_for(case_name: str) -> tuple[BenchCase, dict[str, list[TimedRun]]]:
        case: BenchCase = request.getfixturevalue(f"{case_name}_case")
        if case_name not in cache:
            outs = {p: bench_dir / f"gate_{case_name}_{p}" for p in ("baseline", "optimised")}
            commands = {
                "baseline": baseline_command(case.image, bench_bundle.path, outs["baseline"]),
                "optimised": optimised_command(
                    case.image, bench_bundle.path, outs["optimised"], MEMORY_BUDGET
                ),
            }
            # CI: 3 alternations on the quiz case, 2 on the full one (medians of 2 = means).
            n = rounds(3 if case_name == "quiz" else 2)
            cache[case_name] = alternate(commands, case.image, outs, n)
            for path, path_runs in cache[case_name].items():
                recorder.record(
                    "end_to_end",
                    case=case_name,
                    path=path,
                    shape=list(case.shape),
                    seconds=Spread.of([r.seconds for r in path_runs]),
                    peak_rss_bytes=max(r.peak_rss_bytes for r in path_runs),
                )
                last = path_runs[-1].case
                recorder.record(
                    "stages",
                    case=case_name,
                    path=path,
                    timings_s=last.get("timings_s", {}),
                    tiles=last.get("tile_count", 0) + last.get("roi", {}).get("coarse_tiles", 0),
                )
        return case, cache[case_name]

    return runs_for


@pytest.mark.gate
@pytest.mark.parametrize("case_name", CASES)
def test_optimised_run_is_faster_than_baseline(
    case_name: str, gate_runs, recorder: Recorder
) -> None:
    _, runs = gate_runs(case_name)
    gate = speedup_gate(
        [r.seconds for r in runs["baseline"]], [r.seconds for r in runs["optimised"]], MIN_SPEEDUP
    )
    line = f"speed, {case_name} phantom: {gate.message}"
    GATE_LINES.append(line)
    print(line)
    recorder.record(
        "gates",
        gate=f"speed-up, {case_name} phantom",
        passed=gate.passed,
        figure=f"{gate.ratio:.2f}x ({gate.baseline_median_s:.2f} s -> {gate.optimised_median_s:.2f} s)",
        requirement=f">= {MIN_SPEEDUP:.2f}x",
    )
    assert gate.passed, gate.message


@pytest.mark.gate
@pytest.mark.parametrize("case_name", CASES)
def test_optimised_run_stays_within_memory_budget(
    case_name: str, gate_runs, recorder: Recorder
) -> None:
    _, runs = gate_runs(case_name)
    budget = parse_size(MEMORY_BUDGET)
    peak = max(r.peak_rss_bytes for r in runs["optimised"])
    passed = peak <= budget
    line = (
        f"memory, {case_name} phantom: {'PASS' if passed else 'FAIL'}: peak RSS {format_size(peak)} "
        f"with --memory-budget {MEMORY_BUDGET} (baseline: "
        f"{format_size(max(r.peak_rss_bytes for r in runs['baseline']))})"
    )
    GATE_LINES.append(line)
    print(line)
    recorder.record(
        "gates",
        gate=f"peak memory, {case_name} phantom",
        passed=passed,
        figure=format_size(peak),
        requirement=f"<= {MEMORY_BUDGET}",
    )
    assert passed, line
