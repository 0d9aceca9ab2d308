"""Peers (optional): nnU-Net v2's and MONAI's sliding windows on our network, against ours.

Each peer runs as its own process (bench/peers.py) with the same preprocessing, post-processing
and restore; we report its wall time, peak memory, and the Dice between its mask and
``edgepanc run``'s (whole pancreas and lesion). The peers are not dependencies of edgepanc: a
peer whose package is absent is skipped with the reason. To install them beside the CPU build of
torch: ``echo torch==$(python -c "import torch; print(torch.__version__.split('+')[0])") >
c.txt; pip install -c c.txt nnunetv2 monai`` (without the constraint pip may pull a CUDA build).
nnU-Net with mirroring on the full-size phantom takes over half an hour on 2 cores:
``--deselect "bench/test_peers.py::test_peer[full-nnunet]"`` leaves it out.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from edgepanc.metrics import segmentation_metrics

from harness import BenchCase, optimised_command, rounds, timed_run
from peers import PEER_PACKAGES, PEERS
from results import Recorder, Spread

PEERS_SCRIPT = Path(__file__).with_name("peers.py")


@pytest.fixture(scope="module")
def our_masks(bench_bundle, bench_dir: Path):
    """``edgepanc run``'s mask per case, made once for the comparisons."""
    masks: dict[str, Path] = {}

    def mask_for(case: BenchCase) -> Path:
        if case.name not in masks:
            out = bench_dir / f"peers_ours_{case.name}"
            timed_run(optimised_command(case.image, bench_bundle.path, out), case.image, out)
            masks[case.name] = out / f"{case.image.name[: -len('_0000.nii.gz')]}.nii.gz"
        return masks[case.name]

    return mask_for


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("case_name", ["quiz", "full"])
def test_peer(
    peer: str, case_name: str, request, our_masks, bench_bundle, bench_dir: Path, recorder: Recorder
) -> None:
    package = PEER_PACKAGES[peer]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (optional peer comparison)")
    case: BenchCase = request.getfixturevalue(f"{case_name}_case")
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(our_masks(case))))
    out = bench_dir / f"peer_{peer}_{case_name}"
    cmd = [
        sys.executable,
        str(PEERS_SCRIPT),
        peer,
        str(case.image),
        "--model",
        str(bench_bundle.path),
        "--out",
        str(out),
    ]
    # nnU-Net's default mirroring runs 8 passes per tile: over half an hour on a 2-core CPU for
    # the full-size phantom, past the harness's default 15-minute limit.
    timeout_s = 4 * 3600.0 if case_name == "full" else 900.0
    runs = [timed_run(cmd, case.image, out, timeout_s) for _ in range(rounds(1))]
    theirs = sitk.GetArrayFromImage(
        sitk.ReadImage(str(out / f"{case.image.name[: -len('_0000.nii.gz')]}.nii.gz"))
    )
    assert theirs.shape == ours.shape
    agreement = segmentation_metrics(theirs, ours)
    # Where the two disagree, the phantom's reference label says which one is right.
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
    reference_whole = {
        "peer": segmentation_metrics(theirs, reference)["whole_dsc"],
        "ours": segmentation_metrics(ours, reference)["whole_dsc"],
    }
    recorder.record(
        "peers",
        peer=peer,
        case=case_name,
        seconds=Spread.of([r.seconds for r in runs]),
        peak_rss_bytes=max(r.peak_rss_bytes for r in runs),
        whole_dsc=agreement["whole_dsc"],
        lesion_dsc=agreement["lesion_dsc"],
        reference_whole_dsc=reference_whole,
    )
    print(
        f"{peer} on {case_name}: {runs[-1].seconds:.2f} s, agreement {agreement}, whole DSC "
        f"against the reference: {peer} {reference_whole['peer']:.4f}, "
        f"ours {reference_whole['ours']:.4f}"
    )
