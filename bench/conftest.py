"""Session fixtures of the bench suites: the phantom cases and the model bundle, built once.

The bundle: ``$EDGEPANC_BENCH_BUNDLE`` when set (a trained, ideally quantized, bundle: what the
published figures in RESULTS.md use), otherwise the ``tiny`` preset at random weights with a
coarse preprocessing plan, written in a second. Weights do not change how long a tile takes, so
per-patch latency, tiling and stitching costs are measured fairly either way; but the
coarse-to-fine ROI pass of ``edgepanc run`` only shrinks the work when the network actually finds
the pancreas, so speed-ups that come from the ROI are only shown with a trained bundle. See
bench/README.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import BUNDLE_ENV, BenchCase, make_phantom_case
from results import Recorder, results_path

# Coarse enough that the CI gate run (phantoms, bundle, all runs) stays within a few minutes on
# two cores; the network input keeps the runtime's usual 32 x 64 x 64 patch.
FALLBACK_PLAN = {
    "target_spacing": [6.0, 5.0, 5.0],
    "clip_low": -200.0,
    "clip_high": 300.0,
    "mean": 60.0,
    "std": 80.0,
    "patch_size": [32, 64, 64],
}


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml belongs to the lead; the marker is registered here so `-m gate` is clean.
    config.addinivalue_line(
        "markers", "gate: speed and memory gates (the short CI run: pytest bench -m gate)"
    )


@dataclass(frozen=True)
class BenchBundle:
    path: Path
    description: str
    trained: bool


@pytest.fixture(scope="session")
def recorder() -> Iterator[Recorder]:
    """Collects measurements; written to ``$EDGEPANC_BENCH_RESULTS`` at the end, if set."""
    rec = Recorder(path=results_path())
    yield rec
    if rec.path is not None:
        rec.save(rec.path)


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def bench_bundle(bench_dir: Path, recorder: Recorder) -> BenchBundle:
    """The bundle every suite measures (see the module docstring for the choice)."""
    from edgepanc.bundle import load_bundle, write_bundle
    from edgepanc.networks import build_network

    configured = os.environ.get(BUNDLE_ENV)
    if configured:
        bundle = load_bundle(Path(configured))  # a clear BundleError if it is not a bundle
        result = BenchBundle(
            bundle.path,
            f"{BUNDLE_ENV}={configured} ({bundle.kind}, default artifact "
            f"{bundle.default_artifact or 'torch fp32'})",
            trained=True,
        )
    else:
        import torch

        torch.manual_seed(0)
        bundle = write_bundle(
            bench_dir / "bundle_tiny_random", build_network("tiny"), FALLBACK_PLAN
        )
        result = BenchBundle(
            bundle.path,
            "tiny preset at random weights (no EDGEPANC_BENCH_BUNDLE given): timings of tiles, "
            "stitching and I/O are fair; the ROI pass cannot find a pancreas",
            trained=False,
        )
    recorder.record(
        "bundle",
        description=result.description,
        network=list(bundle.network.features),
        patch_size=bundle.preprocessing.get("patch_size"),
        target_spacing=bundle.preprocessing.get("target_spacing"),
    )
    return result


@pytest.fixture(scope="session")
def quiz_case(bench_dir: Path) -> BenchCase:
    """A quiz-size phantom (an ROI crop round the pancreas, like the real data set)."""
    return make_phantom_case(bench_dir / "quiz", "quiz")


@pytest.fixture(scope="session")
def full_case(bench_dir: Path) -> BenchCase:
    """A full-size phantom: a 512 x 512 x 300 abdominal CT."""
    return make_phantom_case(bench_dir / "full", "full")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every gate's figures, also under -q and when they pass."""
    from harness import GATE_LINES

    if GATE_LINES:
        terminalreporter.section("edgepanc gates")
        for line in GATE_LINES:
            terminalreporter.write_line(line)
