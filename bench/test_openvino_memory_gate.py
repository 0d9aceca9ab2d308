"""``edgepanc run --backend openvino`` on the 512 x 512 x 300 phantom stays under a tight
``--memory-budget`` (0.6 GB), peak resident memory measured from outside the process.

Not a CI gate (the margin is about 30 MiB): on the 2-core Xeon the CI bundle (the tiny network
at random weights on a 6 x 5 x 5 mm grid, whose mask covers the whole scan: the worst case for
restoring and measuring) peaked at 541 MiB under 0.6 GB (572 MiB) with 4 tiles, the default
command's trained bundle at 460 MiB with 3. docs/measurements/runtime_network_input.md.

The bench bundle's network is exported to ONNX beside a copy of the bundle, as the compression
stage exports it, so that OpenVINO has a file to compile (bf16 where the CPU has it natively,
fp32 elsewhere). The planner must count OpenVINO's own buffers for the budget to hold. A bundle
whose grid makes the case need more than 0.6 GB even one tile at a time (a trained bundle at
2 x 1.2 x 1.2 mm needs about 0.83 GB) must be refused up front, naming the smallest budget that
works; the gate then runs at that budget and holds the run to it.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from edgepanc.memory import format_size, parse_size

from harness import GATE_LINES, BenchCase, TimedRun, optimised_command, timed_run
from results import Recorder

TIGHT_BUDGET = "0.6GB"
# The runtime's refusal: "memory budget 0.60 GB is too small; this case needs at least 0.83 GB ..."
NEEDS = re.compile(r"needs at least ([0-9.]+ ?[KMGT]i?B)")


@pytest.fixture(scope="module")
def openvino_bundle(bench_bundle, bench_dir: Path) -> Path:
    """A copy of the bench bundle with its network's fp32 ONNX export as an artifact."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    from edgepanc.bundle import load_bundle, save_bundle_metadata
    from edgepanc.quantization.onnx_export import export_onnx

    folder = bench_dir / "bundle_openvino"
    shutil.copytree(bench_bundle.path, folder)
    bundle = load_bundle(folder)
    if "onnx_fp32" not in bundle.artifacts:
        patch = bundle.preprocessing["patch_size"]
        export_onnx(bundle.load_network(), folder / "model_fp32.onnx", patch)
        bundle.add_artifact("onnx_fp32", "model_fp32.onnx", "onnxruntime", "fp32")
        save_bundle_metadata(bundle)
    return folder


def run_within(budget: str, case: BenchCase, bundle: Path, out: Path) -> TimedRun | str:
    """The OpenVINO run under ``budget``, or the smallest budget its refusal names."""
    command = [*optimised_command(case.image, bundle, out, budget), "--backend", "openvino"]
    try:
        return timed_run(command, case.image, out)
    except RuntimeError as exc:
        needed = NEEDS.search(str(exc))
        if needed is None:
            raise
        # refused up front: nothing may have been written
        assert not any(out.iterdir()), sorted(p.name for p in out.iterdir())
        # the figure is rounded to two decimals: one percent more is surely enough
        return f"{math.ceil(parse_size(needed.group(1).replace(' ', '')) * 1.01 / 1e6)}MB"


def test_openvino_run_on_a_full_size_ct_stays_within_a_tight_budget(
    openvino_bundle: Path, full_case: BenchCase, bench_dir: Path, recorder: Recorder
) -> None:
    out = bench_dir / "gate_full_openvino"
    budget = TIGHT_BUDGET
    run = run_within(budget, full_case, openvino_bundle, out)
    if isinstance(run, str):  # this bundle's grid needs more, said before anything ran
        budget = run
        run = run_within(budget, full_case, openvino_bundle, out)
        assert not isinstance(run, str), f"refused again at the budget it named: {run}"
    assert run.case["backend"] == "openvino", run.case.get("backend")
    passed = run.peak_rss_bytes <= parse_size(budget)
    line = (
        f"memory, full phantom, OpenVINO {run.case['precision']}: "
        f"{'PASS' if passed else 'FAIL'}: peak RSS {format_size(run.peak_rss_bytes)} with "
        f"--memory-budget {budget} (asked {TIGHT_BUDGET}; tile batch {run.case['tile_batch']}, "
        f"{run.seconds:.1f} s)"
    )
    GATE_LINES.append(line)
    print(line)
    recorder.record(
        "gates",
        gate=f"peak memory, full phantom, OpenVINO {run.case['precision']}",
        passed=passed,
        figure=format_size(run.peak_rss_bytes),
        requirement=f"<= {budget}" + ("" if budget == TIGHT_BUDGET else " (0.6GB refused)"),
    )
    assert passed, line
