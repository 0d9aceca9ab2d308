"""Peer sliding-window implementations on our network, as one process per case (for bench).

``python bench/peers.py PEER SCAN --model BUNDLE --out DIR`` reads, preprocesses, predicts the
whole volume with the peer's sliding window, arg-maxes, post-processes, restores and writes the
mask exactly as the baseline does; only the tiling/stitching code differs:

- ``nnunet``: nnU-Net v2's ``nnUNetPredictor.predict_sliding_window_return_logits`` (step 0.5,
  Gaussian) with mirroring test-time augmentation over all three axes (its default);
- ``nnunet-nomirror``: the same without mirroring;
- ``monai``: MONAI's ``sliding_window_inference`` (overlap 0.5, Gaussian blending).

The peers see only the segmentation logits of our multi-task network (:class:`SegmentationOnly`).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

PEERS = ("nnunet", "nnunet-nomirror", "monai")
PEER_PACKAGES = {"nnunet": "nnunetv2", "nnunet-nomirror": "nnunetv2", "monai": "monai"}


class SegmentationOnly(torch.nn.Module):
    """Our multi-task network seen as a plain segmentation network (seg logits only)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[0]


def nnunet_logits(
    network: torch.nn.Module, volume: np.ndarray, patch: tuple[int, ...], mirror: bool
) -> torch.Tensor:
    """nnU-Net v2's own sliding window (its predictor, configured by hand instead of plans)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirror,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.network = SegmentationOnly(network)
    predictor.configuration_manager = SimpleNamespace(patch_size=list(patch))
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=3)
    predictor.allowed_mirroring_axes = (0, 1, 2)
    return predictor.predict_sliding_window_return_logits(torch.from_numpy(volume)[None])


def monai_logits(
    network: torch.nn.Module, volume: np.ndarray, patch: tuple[int, ...]
) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(volume)[None, None],
            patch,
            1,
            SegmentationOnly(network),
            overlap=0.5,
            mode="gaussian",
        )
    return logits[0]


def run_peer(peer: str, scan: Path, bundle_path: Path, out: Path) -> dict[str, Any]:
    """One case through ``peer``; writes ``<name>.nii.gz`` and ``<name>.json`` (timings) to ``out``."""
    from edgepanc.bundle import load_bundle
    from edgepanc.inferers.probabilities import RegionProbabilities, region_probability_bytes
    from edgepanc.io.atomic import write_json_atomic
    from edgepanc.io.volume import read_image, write_label
    from edgepanc.postprocessing.labels import (
        PostprocessConfig,
        mask_region_probabilities,
        postprocess_labels,
    )
    from edgepanc.preprocessing import preprocess_image, restore_label
    from edgepanc.runtime.pipeline import StageTimer
    from edgepanc.runtime.scans import mask_name_for

    bundle = load_bundle(bundle_path)
    plan = bundle.plan
    network = bundle.load_network().eval()
    patch = tuple(int(p) for p in plan.patch_size)
    timer = StageTimer()
    with timer("read"):
        image = read_image(scan)
    with timer("preprocess"):
        volume, grid = preprocess_image(image, plan)
    del image
    gc.collect()
    with timer("infer"):
        if peer == "monai":
            logits = monai_logits(network, volume, patch)
        else:
            logits = nnunet_logits(network, volume, patch, mirror=peer == "nnunet")
        logits = logits.float().numpy()
        labels = logits.argmax(0).astype(np.uint8)
        # The peers' logits are blended already (weight sum 1): the same soft maps as ours.
        whole = tuple(slice(0, s) for s in labels.shape)
        soft = RegionProbabilities(region_probability_bytes(logits, np.float32(1.0)), whole)  # type: ignore[arg-type]
    del logits, volume
    with timer("postprocess"):
        labels = postprocess_labels(labels, tuple(plan.target_spacing), PostprocessConfig())
        soft = mask_region_probabilities(soft, labels)
    with timer("restore"):
        restored = restore_label(labels, grid, soft)
    name = mask_name_for(scan)
    out.mkdir(parents=True, exist_ok=True)
    with timer("write"):
        write_label(restored, out / name)
    report = {"name": name, "peer": peer, "timings_s": timer.seconds}
    write_json_atomic(out / f"{name[: -len('.nii.gz')]}.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("scan", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    report = run_peer(args.peer, args.scan, args.model, args.out)
    print(json.dumps({**report, "seconds": time.perf_counter() - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
