"""Helpers for the runtime tests: a phantom CT, a deterministic predictor, a tiny bundle."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from edgepanc.preprocessing import PreprocessingPlan
from edgepanc.runtime.model import LoadedModel

# Tiny tensors on a shared 2-core machine: more threads only add synchronisation overhead.
torch.set_num_threads(1)

# A plan that keeps the tests fast: coarse spacing, small patch, HU window around soft tissue.
TINY_PLAN = PreprocessingPlan(
    target_spacing=(4.0, 4.0, 4.0),
    clip_low=-200.0,
    clip_high=300.0,
    mean=50.0,
    std=100.0,
    patch_size=(16, 16, 16),
)


def phantom(
    shape_zyx: Sequence[int] = (40, 48, 56),
    spacing_xyz: Sequence[float] = (2.0, 2.0, 2.5),
    direction: Sequence[float] = (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    origin: Sequence[float] = (10.0, -20.0, 5.0),
    with_lesion: bool = True,
) -> sitk.Image:
    """int16 CT-like volume: air-ish background, a soft-tissue ellipsoid, a brighter lesion."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape_zyx, dtype=np.float32)
    cz, cy, cx = (s * 0.5 for s in shape_zyx)
    organ = ((z - cz) / 9) ** 2 + ((y - cy) / 10) ** 2 + ((x - cx * 1.2) / 14) ** 2 <= 1
    ct = rng.integers(-900, -800, shape_zyx).astype(np.int16)
    ct[organ] = 100
    if with_lesion:
        lesion = ((z - cz) / 3) ** 2 + ((y - cy) / 3) ** 2 + ((x - cx * 1.2) / 4) ** 2 <= 1
        ct[lesion] = 250
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing([float(s) for s in spacing_xyz])
    img.SetDirection([float(d) for d in direction])
    img.SetOrigin([float(o) for o in origin])
    return img


class ThresholdPredictor:
    """A deterministic stand-in network: soft tissue -> pancreas, very bright -> lesion.

    Works on normalised intensities of :data:`TINY_PLAN`; class logits favour subtype 1 more the
    brighter the tile, so lesion-weighted classification has something to weigh.
    """

    name = "threshold"
    precision = "fp32"
    device = "cpu"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(batch.shape[0])
        hu = batch[:, 0] * TINY_PLAN.std + TINY_PLAN.mean
        seg = np.stack([np.zeros_like(hu), (hu - 0.0) / 10, (hu - 180.0) / 5], axis=1)
        seg[:, 1] = np.minimum(seg[:, 1], 8.0)  # the lesion class wins above 180 HU
        lesion = (hu > 180).mean(axis=(1, 2, 3))
        cls = np.stack([np.zeros_like(lesion), 50 * lesion, np.full_like(lesion, -1.0)], axis=1)
        return seg.astype(np.float32), cls.astype(np.float32)


def threshold_model() -> LoadedModel:
    return LoadedModel(
        predictor=ThresholdPredictor(),
        plan=TINY_PLAN,
        activation_bytes_per_voxel=64.0,
        baseline_rss=200_000_000,
    )


def write_image(img: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def make_tiny_bundle(folder: Path) -> Path:
    """A bundle of the "tiny" network at fixed random weights with :data:`TINY_PLAN`."""
    import torch

    from edgepanc.bundle import ModelBundle, save_bundle_metadata, save_weights
    from edgepanc.networks import PRESETS, build_network

    torch.manual_seed(0)
    network = build_network("tiny")
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(network, folder / "weights.pt")
    bundle = ModelBundle(
        path=folder,
        network=PRESETS["tiny"],
        preprocessing=TINY_PLAN.to_dict(),
        labels={"0": "background", "1": "pancreas", "2": "lesion"},
        subtypes={"0": "subtype0", "1": "subtype1", "2": "subtype2"},
        metrics={},
        provenance={},
        artifacts={},
        default_artifact=None,
        kind="trained",
    )
    save_bundle_metadata(bundle)
    return folder


def run_cli(*args: str | Path):
    """Invoke ``edgepanc`` in-process; returns click's Result (stdout and stderr apart)."""
    from click.testing import CliRunner

    from edgepanc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def make_onnx_bundle(folder: Path, seed: int = 0) -> Path:
    """A tiny bundle whose default artifact is an fp32 ONNX graph (activation footprint stored);
    ``seed`` draws its random weights."""
    import warnings

    from edgepanc.bundle import load_bundle, save_bundle_metadata, write_bundle
    from edgepanc.networks import build_network

    torch.manual_seed(seed)
    model = build_network("tiny").eval()
    write_bundle(folder, model, TINY_PLAN.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, *TINY_PLAN.patch_size),),
            str(folder / "model_fp32.onnx"),
            input_names=["image"],
            output_names=["seg_logits", "cls_logits"],
            dynamic_axes={"image": {0: "b"}, "seg_logits": {0: "b"}, "cls_logits": {0: "b"}},
            opset_version=17,
            dynamo=False,
        )
    bundle = load_bundle(folder)
    bundle.add_artifact("onnx_fp32", "model_fp32.onnx", "onnxruntime", "fp32", make_default=True)
    save_bundle_metadata(bundle)
    return folder
