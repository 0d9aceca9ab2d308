"""Ensembles: the manifest, probability averaging, loading every member with one variant, and a
run under a memory budget that counts each member's engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepanc.bundle import load_bundle, save_bundle_metadata
from edgepanc.ensemble import ENSEMBLE_FILE, is_ensemble, read_ensemble, write_ensemble
from edgepanc.errors import BundleError
from edgepanc.inferers.ensemble import EnsemblePredictor, softmax
from edgepanc.runtime.budget import VolumeSizes, plan_tile_batch, tile_batch_bytes

from runtime_support import TINY_PLAN, make_onnx_bundle, phantom, run_cli, write_image


class FixedPredictor:
    """Returns the same logits for every batch (per tile: ``seg`` [3, D, H, W], ``cls`` [3])."""

    precision = "fp32"
    device = "cpu"

    def __init__(self, seg: np.ndarray, cls: np.ndarray, name: str = "onnxruntime") -> None:
        self.seg, self.cls, self.name = seg, cls, name
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        n = batch.shape[0]
        return np.repeat(self.seg[None], n, 0), np.repeat(self.cls[None], n, 0)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ensemble")
    for seed in (0, 1):
        make_onnx_bundle(folder / f"fold_{seed}", seed=seed)
    write_ensemble(folder, ["fold_0", "fold_1"], {"cross_validation": {"folds": 2}})
    return folder


def test_the_ensemble_averages_probabilities_not_logits():
    rng = np.random.default_rng(0)
    first = FixedPredictor(
        rng.normal(0, 3, (3, 4, 4, 4)).astype(np.float32), np.array([4.0, 0, 0], np.float32)
    )
    # the second member's logits are ten times larger: averaging logits would let it decide
    second = FixedPredictor(
        10 * rng.normal(0, 3, (3, 4, 4, 4)).astype(np.float32), np.array([0, 1.0, 0], np.float32)
    )
    ensemble = EnsemblePredictor([first, second])
    seg, cls = ensemble(np.zeros((2, 1, 4, 4, 4), np.float32))
    assert seg.shape == (2, 3, 4, 4, 4) and cls.shape == (2, 3)
    expected = (softmax(first.seg[None], 1) + softmax(second.seg[None], 1)) / 2
    np.testing.assert_allclose(softmax(seg, 1)[0], expected[0], atol=1e-6)
    expected_cls = (softmax(first.cls[None]) + softmax(second.cls[None])) / 2
    np.testing.assert_allclose(softmax(cls)[1], expected_cls[0], atol=1e-6)
    assert softmax(cls)[0].argmax() == 0  # 0.5 * (0.96 + 0.21) for subtype 0 beats subtype 1
    assert (first.calls, second.calls, ensemble.members) == (1, 1, 2)


def test_members_must_be_two_or_more_and_share_a_backend():
    one = FixedPredictor(np.zeros((3, 2, 2, 2), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        EnsemblePredictor([one])
    other = FixedPredictor(one.seg, one.cls, name="openvino")
    with pytest.raises(ValueError, match="share a backend"):
        EnsemblePredictor([one, other])


def test_the_manifest_names_members_inside_the_folder_that_see_the_same_input(members, tmp_path):
    ensemble = read_ensemble(members)
    assert is_ensemble(members) and not is_ensemble(members / "fold_0")
    assert [m.path.name for m in ensemble.members] == ["fold_0", "fold_1"]
    assert ensemble.provenance["cross_validation"]["folds"] == 2
    manifest = json.loads((members / ENSEMBLE_FILE).read_text())

    def refused(data: dict, match: str) -> None:
        folder = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for name in ("fold_0", "fold_1"):
            (folder / name).symlink_to(members / name)
        (folder / ENSEMBLE_FILE).write_text(json.dumps(data))
        with pytest.raises(BundleError, match=match) as info:
            read_ensemble(folder)
        assert ENSEMBLE_FILE in str(info.value)

    refused({**manifest, "members": ["fold_0"]}, "at least 2")
    refused({**manifest, "members": ["fold_0", "../fold_1"]}, "not a folder inside")
    refused({**manifest, "members": ["fold_0", "fold_0"]}, "named twice")
    refused({**manifest, "format": "x"}, "not an edgepanc ensemble")
    # a member whose preprocessing differs cannot share the one preprocessed volume
    odd = tmp_path / "odd"
    make_onnx_bundle(odd / "fold_0")
    make_onnx_bundle(odd / "fold_1", seed=1)
    bundle = load_bundle(odd / "fold_1")
    bundle.preprocessing = {**bundle.preprocessing, "mean": TINY_PLAN.mean + 1}
    save_bundle_metadata(bundle)
    with pytest.raises(BundleError, match="differ in preprocessing"):
        write_ensemble(odd, ["fold_0", "fold_1"])
    assert not (odd / ENSEMBLE_FILE).exists()


def test_load_model_runs_every_member_with_one_variant_and_averages_them(members):
    from edgepanc.runtime.model import load_model

    loaded = load_model(members, backend="onnxruntime")
    single = [load_model(members / f"fold_{k}", backend="onnxruntime") for k in (0, 1)]
    assert loaded.members == 2 and loaded.artifact == "onnx_fp32"
    assert isinstance(loaded.predictor, EnsemblePredictor)
    batch = np.random.default_rng(1).normal(0, 1, (1, 1, *TINY_PLAN.patch_size)).astype(np.float32)
    seg, cls = loaded.predictor(batch)
    parts = [m.predictor(batch) for m in single]
    np.testing.assert_allclose(
        softmax(seg), (softmax(parts[0][0]) + softmax(parts[1][0])) / 2, atol=1e-5
    )
    np.testing.assert_allclose(
        softmax(cls), (softmax(parts[0][1]) + softmax(parts[1][1])) / 2, atol=1e-5
    )
    assert loaded.model_id not in {m.model_id for m in single}


def test_a_variant_that_failed_in_one_member_is_not_run_for_any(members, tmp_path):
    import shutil

    from edgepanc.runtime.model import load_model

    folder = tmp_path / "ens"
    shutil.copytree(members, folder)
    bundle = load_bundle(folder / "fold_1")
    bundle.artifacts["onnx_fp32"]["within_tolerance"] = False
    save_bundle_metadata(bundle)
    with pytest.raises(BundleError, match="failed the accuracy tolerance"):
        load_model(folder, backend="onnxruntime", precision="fp32")


def test_the_memory_plan_counts_each_members_engine():
    from edgepanc.runtime.budget import DEFAULT_ENGINE, OPENVINO_ENGINE

    sizes = VolumeSizes.from_shapes((300, 512, 512), 2, (120, 200, 200))
    args = (None, 300_000_000, sizes, 10_000_000, (32, 64, 64), 150.0, 2)
    voxels = 32 * 64 * 64
    accumulators = 2 * 2 * 3 * voxels * 4  # the running sum and one member's softmax
    for engine, memory in (("openvino", OPENVINO_ENGINE), ("onnxruntime", DEFAULT_ENGINE)):
        one = plan_tile_batch(*args, engine=engine).estimate
        three = plan_tile_batch(*args, engine=engine, members=3).estimate
        further = (memory.extra_member or memory).batch_bytes(2, voxels, 150.0)
        assert three.tile_batch_bytes == one.tile_batch_bytes + 2 * further + accumulators
    # OpenVINO's further members were measured to hold less than its first (its own bound)
    assert OPENVINO_ENGINE.extra_member is not None
    assert OPENVINO_ENGINE.extra_member.batch_bytes(2, voxels, 150.0) < OPENVINO_ENGINE.batch_bytes(
        2, voxels, 150.0
    )
    one = plan_tile_batch(*args, engine="openvino").estimate
    budget = one.peak + 1
    assert plan_tile_batch(budget, *args[1:6], None, engine="openvino").tile_batch >= 1
    with pytest.raises(Exception, match="too small"):
        plan_tile_batch(budget, *args[1:6], None, engine="openvino", members=3)


def test_a_run_of_an_ensemble_stays_in_its_budget_and_records_the_members(members, tmp_path):
    scan = write_image(phantom(), tmp_path / "scans" / "ct.nii.gz")
    out = tmp_path / "out"
    result = run_cli(
        "run",
        scan,
        "--model",
        members,
        "--out",
        out,
        "--memory-budget",
        "1.2GB",
        "--backend",
        "onnxruntime",
    )
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 models" in result.output
    report = json.loads((out / "ct.json").read_text())
    assert report["ensemble_members"] == 2
    assert report["model"]["ensemble_members"] == 2 and report["model"]["path"] == str(members)
    assert report["peak_memory_bytes"] <= 1.2e9
    plan = report["memory_plan"]  # the fine pass's: planned with both members' engines
    assert plan["peak"] <= plan["budget"] == 1.2e9
    activation = load_bundle(members / "fold_0").activation_bytes_per_voxel
    planned = [
        tile_batch_bytes(plan["tile_batch"], TINY_PLAN.patch_size, activation, "onnxruntime", k)
        for k in (1, 2)
    ]
    assert plan["tile_batch_bytes"] == planned[1] > planned[0]


def test_the_python_api_segments_with_an_ensemble_as_run_does(members, tmp_path):
    import edgepanc

    scan = write_image(phantom(), tmp_path / "scans" / "ct.nii.gz")
    model = edgepanc.load_bundle(members, backend="onnxruntime")
    assert model.members == 2 and isinstance(model.predictor, EnsemblePredictor)
    result = edgepanc.segment(scan, model=model)
    out = tmp_path / "out"
    assert (
        run_cli("run", scan, "--model", members, "--out", out, "--backend", "onnxruntime").exit_code
        == 0
    )
    report = json.loads((out / "ct.json").read_text())
    np.testing.assert_allclose(result.probabilities, report["probabilities"], atol=1e-5)
    assert result.lesion_volume_ml == pytest.approx(report["lesion_volume_ml"], abs=1e-3)


def test_an_ensemble_grows_no_lesion_though_its_members_have_margins(members, tmp_path):
    import shutil

    from edgepanc.bundle import load_bundle, save_bundle_metadata
    from edgepanc.runtime.model import load_model

    folder = tmp_path / "ensemble"
    shutil.copytree(members, folder)
    for k in (0, 1):
        bundle = load_bundle(folder / f"fold_{k}")
        bundle.lesion_margins_mm = (0.0, 0.0, 1.5 + k)
        save_bundle_metadata(bundle)
    member = load_model(folder / "fold_1", backend="onnxruntime")
    assert member.lesion_margins_mm == (0.0, 0.0, 2.5)
    assert load_model(folder, backend="onnxruntime").lesion_margins_mm == ()
