"""The runtime's backend choice end to end: ``edgepanc run`` (``--backend auto``, which times the
bundle's OpenVINO and ONNX Runtime variants on this CPU) against ``edgepanc run --backend
onnxruntime`` (the runtime before OpenVINO: the bundle's ONNX Runtime default), on the
512 x 512 x 300 phantom.

Runs alternate in one session (ort auto ort auto ...). What OpenVINO gives within today's runtime:
not slower (ratio of median wall times of the whole process) and mask agreement (whole-pancreas
Dice between the two masks) at least 0.99; the peak resident memory of each, measured from
outside, is recorded (OpenVINO's library and compiled model hold about 20 MiB more). Issue 26's
targets (2x faster, no more memory) are against ``edgepanc run`` as it was when OpenVINO came,
whose whole pipeline was slower too: ``scripts/compare_with_release.py`` runs that commit beside
this one (docs/measurements/runtime_network_input.md). Needs a bundle written by ``edgepanc
quantize`` (``EDGEPANC_BENCH_BUNDLE``): the CI bundle has no ONNX file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgepanc.bundle import load_bundle

from harness import BenchCase, head_to_head, optimised_command, release_commands, rounds
from results import Recorder, Spread

SPEEDUP_TARGET = 1.0
AGREEMENT_TARGET = 0.99


def test_auto_backend_against_onnxruntime_end_to_end(
    full_case: BenchCase, bench_bundle, bench_dir: Path, recorder: Recorder
) -> None:
    bundle = load_bundle(bench_bundle.path)
    if not any(a.get("backend") == "onnxruntime" for a in bundle.artifacts.values()):
        pytest.skip("the bundle has no ONNX Runtime artifact (not written by edgepanc quantize)")
    outs = {path: bench_dir / f"backend_{path}" for path in ("onnxruntime", "auto")}
    commands = {
        path: [*optimised_command(full_case.image, bench_bundle.path, out), "--backend", path]
        for path, out in outs.items()
    }
    result = head_to_head(commands, full_case.image, outs, rounds(2))
    agreement, speedup = result.agreement, result.speedup("onnxruntime", "auto")
    chosen = {path: result.case(path) for path in outs}
    peaks = {path: result.peak(path) for path in outs}
    for path, case in chosen.items():
        recorder.record(
            "end_to_end",
            case="full",
            path=f"edgepanc run --backend {path}: {case['artifact']} "
            f"({case['backend']} {case['precision']})",
            shape=list(full_case.shape),
            seconds=Spread.of([r.seconds for r in result.runs[path]]),
            peak_rss_bytes=peaks[path],
        )
    recorder.record(
        "backend_end_to_end",
        case="full",
        onnxruntime=chosen["onnxruntime"]["artifact"],
        auto=chosen["auto"]["artifact"],
        speedup=speedup,
        whole_dsc=agreement["whole_dsc"],
        lesion_dsc=agreement["lesion_dsc"],
        peak_rss_bytes=peaks,
    )
    line = (
        f"full phantom: auto ({chosen['auto']['artifact']}) {result.median_s('auto'):.2f} s vs "
        f"--backend onnxruntime ({chosen['onnxruntime']['artifact']}) "
        f"{result.median_s('onnxruntime'):.2f} s = {speedup:.2f}x; agreement whole "
        f"{agreement['whole_dsc']:.4f}, lesion {agreement['lesion_dsc']:.4f}; peak RSS "
        f"{peaks['auto'] / 2**20:.0f} MiB vs {peaks['onnxruntime'] / 2**20:.0f} MiB"
    )
    print(line)
    assert speedup >= SPEEDUP_TARGET, line
    assert agreement["whole_dsc"] >= AGREEMENT_TARGET, line


RELEASE_ENV = "EDGEPANC_BENCH_RELEASE"
RELEASE_SPEEDUP_TARGET = 2.0


def test_against_the_runtime_when_openvino_came(
    full_case: BenchCase, bench_bundle, bench_dir: Path, recorder: Recorder
) -> None:
    """``edgepanc run`` against the same command of the commit ``$EDGEPANC_BENCH_RELEASE`` has
    checked out (``git worktree add --detach ../then 0706c7a``: the runtime issue 26 was filed
    at), alternating: at least 2x faster, masks agreeing at 0.99 or more, no more memory."""
    tree = os.environ.get(RELEASE_ENV)
    if not tree:
        pytest.skip(f"set {RELEASE_ENV} to a worktree of the earlier commit")
    outs = {key: bench_dir / f"release_{key}" for key in ("then", "now")}
    commands = release_commands(full_case.image, bench_bundle.path, Path(tree), outs)
    result = head_to_head(commands, full_case.image, outs, rounds(3))
    agreement, speedup = result.agreement, result.speedup("then", "now")
    peaks = {key: result.peak(key) for key in outs}
    recorder.record(
        "release_end_to_end",
        case="full",
        tree=tree,
        then=result.case("then").get("artifact"),
        now=result.case("now").get("artifact"),
        seconds={k: Spread.of([r.seconds for r in v]) for k, v in result.runs.items()},
        speedup=speedup,
        whole_dsc=agreement["whole_dsc"],
        lesion_dsc=agreement["lesion_dsc"],
        peak_rss_bytes=peaks,
    )
    line = (
        f"full phantom: edgepanc run now {result.median_s('now'):.2f} s vs then ({tree}) "
        f"{result.median_s('then'):.2f} s = {speedup:.2f}x; agreement whole "
        f"{agreement['whole_dsc']:.4f}; peak RSS {peaks['now'] / 2**20:.0f} MiB vs "
        f"{peaks['then'] / 2**20:.0f} MiB"
    )
    print(line)
    assert speedup >= RELEASE_SPEEDUP_TARGET, line
    assert agreement["whole_dsc"] >= AGREEMENT_TARGET, line
    assert peaks["now"] <= peaks["then"], line
