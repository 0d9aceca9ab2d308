"""`edgepanc synth`: phantom content, layouts, determinism, CLI errors and non-triviality."""

from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from scipy import ndimage

from edgepanc.cli import main
from edgepanc.metrics import dice
from edgepanc.synth import dataset as synth_dataset
from edgepanc.synth.anatomy import sample_anatomy
from edgepanc.synth.dataset import (
    REAL_SPLIT,
    SynthConfig,
    apportion,
    count_test_cases,
    plan_cases,
    synthesize,
)
from edgepanc.synth.geometry import DIRECTION, Grid, grid_covering
from edgepanc.synth.lesion import sample_lesion
from edgepanc.synth.nontriviality import (
    best_interval_classifier,
    best_threshold,
    best_window,
    lesion_mean_hu,
    unmarked_boundary_share,
)
from edgepanc.synth.phantom import Phantom, PhantomSpec, generate_phantom, render
from edgepanc.synth.scanner import Scanner

N_POPULATION = 60


@pytest.fixture(scope="module")
def population() -> list[tuple[Phantom, int]]:
    """The 60 labelled quiz phantoms of seed 0, generated once for the module (about a minute)."""
    plan = [c for c in plan_cases(N_POPULATION, seed=0, size="quiz") if c.split != "test"]
    # Cases are independent and seeded by their spec: both cores halve the wait.
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        phantoms = list(pool.map(generate_phantom, [c.spec for c in plan]))
    return list(zip(phantoms, [c.subtype for c in plan], strict=True))


# --- non-triviality (issue point 7) --------------------------------------------------------------


@pytest.mark.slow
def test_no_hu_threshold_or_window_segments_the_pancreas(population):
    images = [p.image for p, _ in population]
    masks = [p.label > 0 for p, _ in population]
    threshold = best_threshold(images, masks)
    window = best_window(images, masks)
    assert threshold.mean_dice < 0.5
    assert window.mean_dice < 0.5
    # The histogram shortcut must agree with DSC computed voxel by voxel.
    direct = np.mean(
        [dice((im >= window.lo) & (im < window.hi), m) for im, m in zip(images, masks, strict=True)]
    )
    assert direct == pytest.approx(window.mean_dice, abs=1e-9)


@pytest.mark.slow
def test_mean_lesion_hu_does_not_separate_subtypes(population):
    means = [lesion_mean_hu(p.image, p.label) for p, _ in population]
    subtypes = [s for _, s in population]
    assert not np.isnan(means).any()
    assert best_interval_classifier(means, subtypes).macro_f1 < 0.75


def test_threshold_search_finds_a_perfect_threshold():
    image = np.zeros((4, 8, 8), np.int16)
    mask = np.zeros_like(image, bool)
    image[1:3, 2:6, 2:6], mask[1:3, 2:6, 2:6] = 100, True
    result = best_threshold([image], [mask])
    assert result.mean_dice == pytest.approx(1.0)
    assert 0 < result.lo <= 100 and result.hi == float("inf")
    window = best_window([image], [mask])
    assert window.mean_dice == pytest.approx(1.0) and window.lo <= 100 < window.hi


def test_interval_classifier_matches_brute_force():
    rng = np.random.default_rng(3)
    values = np.round(rng.normal(size=24), 1)
    labels = rng.integers(0, 3, size=24)
    found = best_interval_classifier(values, labels)
    grid = np.concatenate([[-10], np.unique(values) + 0.05, [10]])
    best = 0.0
    for c1, c2 in itertools.combinations_with_replacement(grid, 2):
        for assignment in itertools.product(range(3), repeat=3):
            pred = np.choose((values >= c1).astype(int) + (values >= c2), assignment)
            f1 = [
                2
                * ((pred == k) & (labels == k)).sum()
                / max((pred == k).sum() + (labels == k).sum(), 1)
                for k in range(3)
            ]
            best = max(best, float(np.mean(f1)))
    assert found.macro_f1 == pytest.approx(best)
    separable = best_interval_classifier([1, 2, 10, 11, 20, 21], [2, 2, 0, 0, 1, 1])
    assert separable.macro_f1 == pytest.approx(1.0)
    assert separable.assignment == (2, 0, 1)


# --- phantom content ------------------------------------------------------------------------------


@pytest.mark.slow
def test_labels_are_anatomically_plausible(population):
    for phantom, subtype in population:
        assert phantom.image.dtype == np.int16 and phantom.label.dtype == np.uint8
        assert set(np.unique(phantom.label)) == {0, 1, 2}
        lesion = phantom.label == 2
        _, n_lesions = ndimage.label(lesion)
        assert n_lesions == 1, "exactly one connected lesion"
        touching = ndimage.binary_dilation(lesion, iterations=2) & (phantom.label == 1)
        assert touching.any(), "the lesion lies in or at the edge of the pancreas"
        voxel_ml = float(np.prod(phantom.grid.spacing)) / 1000
        assert 40 <= (phantom.label > 0).sum() * voxel_ml <= 120, "pancreas volume in ml"
        # The ROI keeps a margin: the pancreas never touches the x/y border of a quiz crop.
        assert not (phantom.label[:, [0, -1], :].any() or phantom.label[:, :, [0, -1]].any())
        assert phantom.subtype == subtype


def test_most_of_the_gland_outline_shows_an_edge():
    """A fat plane keeps solid organs of the gland's attenuation off most of its surface: without
    it 28% of the outline (up to 50% in a case) had no edge and the label there was a guess."""
    shares = []
    for index in range(6):
        spec = PhantomSpec(seed=0, split="train", subtype=index % 3, index=index)
        rng = spec.rng()
        anatomy = sample_anatomy(rng)
        lesion = sample_lesion(rng, anatomy.pancreas, spec.subtype)
        grid = grid_covering(anatomy.pancreas.box().union(lesion.box()), (2.0, 1.0, 1.0))
        hu, label = render(anatomy, lesion, grid)
        shares.append(unmarked_boundary_share(hu, label))
    assert np.mean(shares) < 0.2
    assert max(shares) < 0.4


def test_unmarked_boundary_share_counts_the_ring_outside_the_gland():
    label = np.zeros((5, 7, 7), np.uint8)
    label[1:4, 2:5, 2:5] = 1
    hu = np.where(label > 0, 100.0, -100.0).astype(np.float32)
    assert unmarked_boundary_share(hu, label) == 0.0
    hu[label == 0] = 110.0  # same attenuation all round: no edge anywhere
    assert unmarked_boundary_share(hu, label) == 1.0
    hu[:, :, :2] = -100.0  # fat on one side
    share = unmarked_boundary_share(hu, label)
    ring = ndimage.binary_dilation(label > 0) & (label == 0)
    assert share == pytest.approx(1 - ring[:, :, :2].sum() / ring.sum())


def test_anatomy_is_defined_in_millimetres_not_voxels():
    """The same patient sampled at two very different spacings has the same organ volumes."""
    rng = np.random.default_rng(21)
    anatomy = sample_anatomy(rng)
    lesion = sample_lesion(rng, anatomy.pancreas, subtype=0)
    box = anatomy.pancreas.box().union(lesion.box())
    volumes = []
    for spacing in ((1.0, 0.9, 0.9), (3.0, 0.6, 0.6)):
        grid = grid_covering(box, spacing)
        _, label = render(anatomy, lesion, grid)
        voxel_ml = float(np.prod(spacing)) / 1000
        volumes.append(((label > 0).sum() * voxel_ml, (label == 2).sum() * voxel_ml))
    (pancreas_a, lesion_a), (pancreas_b, lesion_b) = volumes
    assert pancreas_a == pytest.approx(pancreas_b, rel=0.05)
    assert lesion_a == pytest.approx(lesion_b, rel=0.2, abs=0.05)


def test_written_geometry_is_ct_like():
    phantom = generate_phantom(PhantomSpec(seed=5, split="train", subtype=1, index=0))
    spacing = phantom.grid.spacing
    assert spacing[1] == spacing[2] and 0.6 <= spacing[1] <= 0.9 and 1.0 <= spacing[0] <= 5.0
    image = phantom.image_sitk()
    assert image.GetDirection() == DIRECTION
    assert image.GetSpacing() == pytest.approx(phantom.grid.sitk_spacing)
    assert phantom.image.min() < -900, "air or gas in the field of view"


def test_same_spec_same_arrays_other_seed_other_arrays():
    spec = PhantomSpec(seed=11, split="validation", subtype=2, index=1)
    a, b = generate_phantom(spec), generate_phantom(spec)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    c = generate_phantom(PhantomSpec(seed=12, split="validation", subtype=2, index=1))
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


# --- splits ---------------------------------------------------------------------------------------


def test_split_follows_the_real_data_set():
    assert apportion(288, list(REAL_SPLIT.values())) == list(REAL_SPLIT.values())
    assert [count_test_cases(n) for n in (288, 60, 8, 1)] == [72, 15, 2, 0]
    for n in (12, 13, 30, 60, 100):
        plan = plan_cases(n, seed=0, size="quiz")
        labelled = [c for c in plan if c.split != "test"]
        assert len(labelled) == n
        groups = {(c.split, c.subtype) for c in labelled}
        assert groups == set(REAL_SPLIT), f"every split and subtype present for N={n}"
        assert len({c.name for c in plan}) == len(plan)


def test_cases_do_not_depend_on_how_many_are_asked_for():
    small = {(c.split, c.subtype, c.spec.index): c.spec for c in plan_cases(12, 7, "quiz")}
    large = {(c.split, c.subtype, c.spec.index): c.spec for c in plan_cases(60, 7, "quiz")}
    assert all(large[key] == spec for key, spec in small.items())


# --- writing the data set -------------------------------------------------------------------------


def _tiny_phantom(spec: PhantomSpec) -> Phantom:
    """A stand-in for generate_phantom so layout tests need no real generation."""
    label = np.zeros((3, 4, 5), np.uint8)
    label[1, 1:3, 1:3] = 1
    label[1, 1, 1] = 2
    image = (label.astype(np.int16) * 50 + spec.index).astype(np.int16)
    scanner = Scanner((2.5, 0.8, 0.8), 10.0, 0.7, 0.5, 0.0)
    return Phantom(
        image,
        label,
        Grid((3, 4, 5), (2.5, 0.8, 0.8), (10.0, 20.0, -30.0)),
        spec.subtype,
        scanner,
        {},
    )


@pytest.fixture
def fast_generation(monkeypatch):
    monkeypatch.setattr(synth_dataset, "generate_phantom", _tiny_phantom)


def test_quiz_layout(tmp_path, fast_generation):
    out = tmp_path / "data"
    synthesize(SynthConfig(out=out, cases=12, layout="quiz", progress=False))
    for split, n_expected in (("train", 9), ("validation", 3)):
        for subtype in range(3):
            folder = out / split / f"subtype{subtype}"
            images = sorted(folder.glob(f"quiz_{subtype}_*_0000.nii.gz"))
            masks = sorted(
                p
                for p in folder.glob(f"quiz_{subtype}_*.nii.gz")
                if not p.name.endswith("_0000.nii.gz")
            )
            assert len(images) == len(masks) >= 1
            assert [p.name.replace("_0000", "") for p in images] == [p.name for p in masks]
        assert sum(1 for _ in (out / split).rglob("*_0000.nii.gz")) == n_expected
    tests = sorted((out / "test").glob("*"))
    assert [p.name for p in tests] == [
        "quiz_013_0000.nii.gz",
        "quiz_014_0000.nii.gz",
        "quiz_015_0000.nii.gz",
    ]
    image = sitk.ReadImage(str(next((out / "train" / "subtype0").glob("*_0000.nii.gz"))))
    assert image.GetDirection() == DIRECTION and image.GetPixelID() == sitk.sitkInt16
    assert not list(tmp_path.glob(".*")), "no staging folder left behind"


def test_nnunet_layout(tmp_path, fast_generation):
    out = tmp_path / "data"
    synthesize(SynthConfig(out=out, cases=12, layout="nnunet", progress=False))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "pancreas": 1, "lesion": 2}
    assert meta["numTraining"] == 12 and meta["file_ending"] == ".nii.gz"
    assert len(meta["validation"]) == 3
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    labels = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert [n.replace("_0000", "") for n in images] == labels and len(labels) == 12
    assert len(list((out / "imagesTs").iterdir())) == 3
    rows = (out / "subtypes.csv").read_text().splitlines()
    assert rows[0] == "Names,Subtype" and len(rows) == 13
    for row in rows[1:]:
        name, subtype = row.split(",")
        assert name in labels and name.startswith(f"quiz_{subtype}_")
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / labels[0])))
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}


def _flaky_phantom(spec: PhantomSpec) -> Phantom:
    # Chosen by spec, not by call count: worker processes each count their own calls.
    if (spec.split, spec.subtype, spec.index) == ("train", 1, 1):
        raise RuntimeError("boom")
    return _tiny_phantom(spec)


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_leaves_nothing_behind(tmp_path, monkeypatch, workers):
    # Worker processes are forked, so they see the patched generator too.
    monkeypatch.setattr(synth_dataset, "generate_phantom", _flaky_phantom)
    with pytest.raises(RuntimeError, match="boom"):
        synthesize(SynthConfig(out=tmp_path / "data", cases=12, progress=False, workers=workers))
    assert list(tmp_path.iterdir()) == []


def _dataset_contents(root) -> tuple[dict[str, tuple[np.ndarray, tuple]], list[dict]]:
    """Every image's voxels and geometry by relative path, and the synth.json records."""
    images = {}
    for path in sorted(root.rglob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        images[path.relative_to(root).as_posix()] = (sitk.GetArrayFromImage(image), geometry)
    return images, json.loads((root / "synth.json").read_text())


def test_same_data_set_for_any_number_of_workers(tmp_path):
    """Real generation in one process and in two gives the same voxels and records, in order."""
    contents = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        synthesize(SynthConfig(out=out, cases=3, seed=5, progress=False, workers=workers))
        contents.append(_dataset_contents(out))
    (images_1, manifest_1), (images_2, manifest_2) = contents
    assert sorted(images_1) == sorted(images_2) and len(images_1) == 7, "3 + 1 images, 3 masks"
    for rel, (array, geometry) in images_1.items():
        np.testing.assert_array_equal(array, images_2[rel][0], err_msg=rel)
        assert geometry == images_2[rel][1], rel
    assert manifest_1["workers"] == 1 and manifest_2["workers"] == 2
    for manifest in (manifest_1, manifest_2):
        del manifest["workers"], manifest["out"]
    assert manifest_1 == manifest_2


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_refuses_bad_requests_and_keeps_user_data(tmp_path, fast_generation):
    runner = CliRunner()
    result = runner.invoke(main, ["synth", "--out", str(tmp_path / "d"), "--cases", "0"])
    assert result.exit_code == 2 and "--cases must be at least 1" in result.output
    assert not (tmp_path / "d").exists()
    result = runner.invoke(main, ["synth", "--out", str(tmp_path / "d"), "--workers", "0"])
    assert result.exit_code == 2 and "Invalid value for '--workers'" in result.output
    assert "0 is not in the range x>=1" in result.output
    assert not (tmp_path / "d").exists()

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    result = runner.invoke(main, ["synth", "--out", str(user), "--cases", "3", "--quiet"])
    assert result.exit_code == 2 and str(user) in result.output and "--overwrite" in result.output
    assert (user / "notes.txt").read_text() == "keep me"

    result = runner.invoke(
        main,
        [
            "synth",
            "--out",
            str(user),
            "--cases",
            "3",
            "--quiet",
            "--overwrite",
            "--layout",
            "nnunet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert not (user / "notes.txt").exists() and (user / "dataset.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "no staging or old folder left"


def test_cli_choices_match_the_generator():
    from edgepanc.commands import synth as command
    from edgepanc.synth.dataset import LAYOUTS
    from edgepanc.synth.phantom import SIZES

    assert command.LAYOUTS == LAYOUTS
    assert command.SIZES == SIZES
