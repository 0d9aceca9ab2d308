"""A tiny labelled data set in the quiz layout for the training tests (written directly, fast).

Each case: a 16 x 32 x 32 int16 CT-like volume (spacing 2 x 1 x 1 mm) with an ellipsoidal
pancreas and a spherical lesion whose brightness depends on the subtype, so that a few steps of
training move the losses. Cases may be made without a lesion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (16, 32, 32)
SPACING_XYZ = (1.0, 1.0, 2.0)
LESION_HU = {0: 40.0, 1: 10.0, 2: 160.0}


def tiny_case(seed: int, subtype: int, with_lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Image (int16 HU) and mask (uint8) arrays in (z, y, x)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    centre = np.array([8.0, 16.0, 16.0]) + rng.uniform(-2, 2, size=3)
    pancreas = ((z - centre[0]) / 4) ** 2 + ((y - centre[1]) / 5) ** 2 + (
        (x - centre[2]) / 9
    ) ** 2 <= 1
    label = pancreas.astype(np.uint8)
    image = rng.normal(-80.0, 15.0, size=SHAPE)
    image[pancreas] = rng.normal(100.0, 15.0, size=int(pancreas.sum()))
    if with_lesion:
        lesion = ((z - centre[0]) / 1.5) ** 2 + ((y - centre[1]) / 3) ** 2 + (
            (x - centre[2] - 2) / 3
        ) ** 2 <= 1
        label[lesion] = 2
        image[lesion] = rng.normal(LESION_HU[subtype], 10.0, size=int(lesion.sum()))
    return image.astype(np.int16), label


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, str(path))


def write_tiny_dataset(
    root: Path,
    train_per_subtype: int = 2,
    validation_per_subtype: dict[int, int] | None = None,
    validation_lesions: bool = True,
) -> Path:
    """Write the quiz layout under ``root``; returns ``root``."""
    validation_per_subtype = (
        {0: 1, 1: 1, 2: 1} if validation_per_subtype is None else validation_per_subtype
    )
    number = 0
    for split, counts in (
        ("train", dict.fromkeys(range(3), train_per_subtype)),
        ("validation", validation_per_subtype),
    ):
        for subtype, count in counts.items():
            folder = root / split / f"subtype{subtype}"
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                with_lesion = validation_lesions or split == "train"
                image, label = tiny_case(number, subtype, with_lesion)
                stem = f"quiz_{subtype}_{number:03d}"
                _write(image, folder / f"{stem}_0000.nii.gz")
                _write(label, folder / f"{stem}.nii.gz")
                number += 1
    return root


def train_tiny_bundle(root: Path, patch: tuple[int, int, int]) -> tuple[Path, Path]:
    """(data, bundle): a tiny quiz data set under ``root`` and the tiny preset trained on it for
    two steps at ``patch`` (one thread), enough for the compression stage to work on."""
    import torch

    from edgepanc.training.config import TrainConfig
    from edgepanc.training.runner import run_training

    torch.set_num_threads(1)
    data = write_tiny_dataset(root / "data")
    config = TrainConfig(
        data=str(data),
        out=str(root / "run"),
        preset="tiny",
        patch_size=patch,
        target_spacing=(2.0, 2.0, 2.0),
        epochs=1,
        steps_per_epoch=2,
        warmup_epochs=0,
    )
    run_training(config)
    return data, root / "run"


def blas_threads() -> list[int]:
    """Threads of every loaded BLAS library (numpy's OpenBLAS here)."""
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
