"""Shared test fixtures: tiny synthetic volumes and data sets, and the real CT volumes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edgepanc.data.cases import Case

TINY_SHAPE = (4, 6, 6)  # (z, y, x): the smallest volume that still has an interior


@pytest.fixture(autouse=True)
def _plain_cpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgepanc train` without --recipe picks the recipe of a plain CPU (no CUDA, no native
    bf16) in every test, so that what a test trains does not depend on the machine it runs on."""
    from edgepanc.training.recipes import Machine

    plain = Machine(cuda=False, cpu_flags=frozenset({"avx2"}))
    monkeypatch.setattr(Machine, "probe", classmethod(lambda cls: plain))


@pytest.fixture(autouse=True)
def _private_edgepanc_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What edgepanc keeps between runs (bundles, the backend choice cache) goes to a folder of
    each test's own, never to the user's, and no test sees another's cached choice."""
    monkeypatch.setenv("EDGEPANC_HOME", str(tmp_path_factory.mktemp("edgepanc_home")))


# Small real CT volumes kept inside the repository (licence and attribution in their README).
REAL_CT_DIR = Path(__file__).resolve().parent / "data" / "real_ct"


def make_image(
    array: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> sitk.Image:
    """A SimpleITK image of ``array`` (z, y, x) with geometry given in (x, y, z)."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(d) for d in direction])
    return img


def tiny_pair(seed: int = 0, **geometry: Sequence[float]) -> tuple[sitk.Image, sitk.Image]:
    """A tiny int16 CT-like image and its uint8 mask (pancreas block with a lesion voxel)."""
    rng = np.random.default_rng(seed)
    ct = rng.integers(-1000, -900, TINY_SHAPE).astype(np.int16)
    mask = np.zeros(TINY_SHAPE, np.uint8)
    mask[1:3, 2:4, 2:5] = 1
    mask[2, 3, 3] = 2
    ct[mask > 0] = rng.integers(30, 150, int((mask > 0).sum()))
    return make_image(ct, **geometry), make_image(mask, **geometry)


def write(img: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture
def quiz_dataset(tmp_path: Path) -> Path:
    """A valid quiz-layout data set: 3 train cases (one per subtype), 1 validation, 2 test."""
    root = tmp_path / "quiz"
    labelled = [
        ("train", 0, "quiz_0_001"),
        ("train", 1, "quiz_1_002"),
        ("train", 2, "quiz_2_003"),
        ("validation", 1, "quiz_1_004"),
    ]
    for i, (split, subtype, case_id) in enumerate(labelled):
        image, mask = tiny_pair(seed=i)
        folder = root / split / f"subtype{subtype}"
        write(image, folder / f"{case_id}_0000.nii.gz")
        write(mask, folder / f"{case_id}.nii.gz")
    for i, case_id in enumerate(["quiz_005", "quiz_006"]):
        write(tiny_pair(seed=10 + i)[0], root / "test" / f"{case_id}_0000.nii.gz")
    return root


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    """A valid nnU-Net raw data set: 3 labelled cases (one for validation), 1 test, subtype CSV."""
    root = tmp_path / "Dataset001_Pancreas"
    for i, case_id in enumerate(["pan_001", "pan_002", "pan_003"]):
        image, mask = tiny_pair(seed=i)
        write(image, root / "imagesTr" / f"{case_id}_0000.nii.gz")
        write(mask, root / "labelsTr" / f"{case_id}.nii.gz")
    write(tiny_pair(seed=9)[0], root / "imagesTs" / "pan_004_0000.nii.gz")
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "pancreas": 1, "lesion": 2},
        "numTraining": 3,
        "file_ending": ".nii.gz",
        "validation": ["pan_003"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    # The three spellings of Names that real tables use.
    (root / "subtypes.csv").write_text(
        "Names,Subtype\npan_001,2\npan_002.nii.gz,0\npan_003_0000.nii.gz,1\n"
    )
    return root


@pytest.fixture(scope="session")
def real_ct_cases() -> list[Case]:
    """The two real CT volumes with pancreas masks from tests/data/real_ct/."""
    folder = REAL_CT_DIR
    names = ["ts_example_ct", "ts_dataset_s0009"]
    return [
        Case(n, folder / n / "image.nii.gz", folder / n / "label.nii.gz", None, "train")
        for n in names
    ]


@pytest.fixture
def image_factory() -> Callable[..., sitk.Image]:
    return make_image
