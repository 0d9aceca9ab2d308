"""Model bundle: round trip, one-line errors for broken bundles, discovery and provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import torch

from edgepanc.bundle import (
    BUNDLE_FORMAT,
    ModelBundle,
    default_bundle_root,
    find_latest_bundle,
    load_bundle,
    provenance,
    save_bundle_metadata,
    save_weights,
    write_bundle,
)
from edgepanc.errors import BundleError, InputError
from edgepanc.networks import PRESETS, MultiTaskUNet, build_network

PLAN = {"target_spacing": [2.5, 0.8, 0.8], "patch_size": [16, 16, 16]}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def bundle_dir(tmp_path):
    model = build_network("tiny")
    write_bundle(tmp_path / "bundle", model, PLAN, metrics={"whole_dsc": 0.9})
    return tmp_path / "bundle"


def _model_json(folder):
    return json.loads((folder / "model.json").read_text())


def test_round_trip_reproduces_the_network(tmp_path):
    model = build_network("tiny").eval()
    write_bundle(tmp_path / "b", model, PLAN, metrics={"whole_dsc": 0.91})
    bundle = load_bundle(tmp_path / "b")
    assert bundle.network == PRESETS["tiny"]
    assert bundle.preprocessing == PLAN
    assert bundle.metrics == {"whole_dsc": 0.91}
    assert bundle.kind == "trained"
    assert bundle.labels["2"] == "lesion"
    loaded = bundle.load_network()
    assert not loaded.training
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        for expected, actual in zip(model(x), loaded(x), strict=True):
            torch.testing.assert_close(actual, expected)


def test_model_json_follows_the_documented_format(bundle_dir):
    data = _model_json(bundle_dir)
    assert data["format"] == BUNDLE_FORMAT and data["version"] == 1
    assert set(data) >= {"kind", "network", "preprocessing", "labels", "subtypes", "metrics"}
    assert data["provenance"]["torch_version"] == torch.__version__
    assert data["artifacts"] == {} and data["default_artifact"] is None


def test_no_temporary_files_are_left(bundle_dir):
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["model.json", "weights.pt"]


def test_deep_supervision_heads_do_not_block_loading(tmp_path):
    trained = MultiTaskUNet(PRESETS["tiny"].replace(deep_supervision=True))
    save_weights(trained, tmp_path / "weights.pt")
    bundle = ModelBundle(path=tmp_path, network=PRESETS["tiny"])
    save_bundle_metadata(bundle)
    loaded = load_bundle(tmp_path).load_network()
    torch.testing.assert_close(loaded.seg_head.weight, trained.seg_head.weight)


def test_artifacts_are_recorded_and_resolved(bundle_dir):
    bundle = load_bundle(bundle_dir)
    (bundle_dir / "model_fp32.onnx").write_bytes(b"onnx")
    bundle.add_artifact(
        "onnx_fp32", "model_fp32.onnx", "onnxruntime", "fp32", make_default=True, dsc=0.9
    )
    save_bundle_metadata(bundle)
    reloaded = load_bundle(bundle_dir)
    assert reloaded.default_artifact == "onnx_fp32"
    assert reloaded.artifact_path() == bundle_dir / "model_fp32.onnx"
    assert reloaded.artifacts["onnx_fp32"]["dsc"] == 0.9
    with pytest.raises(BundleError, match="no artifact named 'trt'"):
        reloaded.artifact_path("trt")


def _break(folder, how):
    if how == "no folder":
        return folder / "absent", "does not exist"
    if how == "no model.json":
        (folder / "model.json").unlink()
        return folder, "no model.json"
    if how == "bad json":
        (folder / "model.json").write_text('{"format": ')
        return folder, "not valid JSON"
    if how == "wrong format":
        data = _model_json(folder) | {"format": "nnunet-plans"}
        (folder / "model.json").write_text(json.dumps(data))
        return folder, "format is 'nnunet-plans'"
    if how == "newer version":
        data = _model_json(folder) | {"version": 99}
        (folder / "model.json").write_text(json.dumps(data))
        return folder, "newer than this edgepanc"
    if how == "bad network":
        data = _model_json(folder)
        data["network"]["norm"] = "layer"
        (folder / "model.json").write_text(json.dumps(data))
        return folder, "network: invalid UNetConfig"
    if how == "no weights":
        (folder / "weights.pt").unlink()
        return folder, "weights.pt: weights file is missing"
    if how == "missing artifact":
        data = _model_json(folder)
        data["artifacts"] = {"int8": {"file": "model_int8.onnx"}}
        (folder / "model.json").write_text(json.dumps(data))
        return folder, "model_int8.onnx: file of artifact 'int8' is missing"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "no folder",
        "no model.json",
        "bad json",
        "wrong format",
        "newer version",
        "bad network",
        "no weights",
        "missing artifact",
    ],
)
def test_broken_bundle_is_one_clear_line(bundle_dir, how):
    path, message = _break(bundle_dir, how)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(path)
    assert isinstance(info.value, InputError)
    assert "\n" not in str(info.value)


def test_weights_of_another_network_are_rejected(bundle_dir):
    save_weights(
        build_network(PRESETS["tiny"].replace(features=(4, 8, 32))), bundle_dir / "weights.pt"
    )
    with pytest.raises(BundleError, match="weights do not match the network in model.json"):
        load_bundle(bundle_dir).load_network()


def test_corrupt_weights_are_rejected(bundle_dir):
    (bundle_dir / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(BundleError, match="cannot read weights"):
        load_bundle(bundle_dir).load_network()


def test_model_json_path_is_accepted(bundle_dir):
    assert load_bundle(bundle_dir / "model.json").path == bundle_dir


def test_find_latest_bundle_picks_newest_model_json(tmp_path):
    model = build_network("tiny")
    older = write_bundle(tmp_path / "runs" / "a", model, PLAN).path
    newer = write_bundle(tmp_path / "runs" / "nested" / "b", model, PLAN).path
    os.utime(older / "model.json", (1_000, 1_000))
    os.utime(newer / "model.json", (2_000, 2_000))
    assert find_latest_bundle(tmp_path) == newer
    os.utime(older / "model.json", (3_000, 3_000))
    assert find_latest_bundle(tmp_path) == older


def test_find_latest_bundle_takes_an_ensemble_whole_never_one_member(tmp_path):
    from edgepanc.ensemble import write_ensemble

    model = build_network("tiny")
    single = write_bundle(tmp_path / "a", model, PLAN).path
    folds = tmp_path / "cv"
    for name in ("fold_0", "fold_1"):
        write_bundle(folds / name, model, PLAN)
    os.utime(single / "model.json", (1_000, 1_000))
    assert find_latest_bundle(tmp_path) == folds / "fold_1"  # not an ensemble yet
    manifest = write_ensemble(folds, ["fold_0", "fold_1"])
    os.utime(manifest, (2_000, 2_000))
    os.utime(folds / "fold_1" / "model.json", (5_000, 5_000))  # a member newer than its manifest
    assert find_latest_bundle(tmp_path) == folds
    os.utime(single / "model.json", (3_000, 3_000))
    assert find_latest_bundle(tmp_path) == single


def test_find_latest_bundle_without_bundles(tmp_path):
    assert find_latest_bundle(tmp_path) is None
    assert find_latest_bundle(tmp_path / "absent") is None


def test_default_bundle_root_follows_edgepanc_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPANC_HOME", str(tmp_path))
    assert default_bundle_root() == tmp_path / "bundles"
    monkeypatch.delenv("EDGEPANC_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_bundle_root() == tmp_path / "cache" / "edgepanc" / "bundles"


def test_provenance_records_versions_host_and_time():
    record = provenance(command="train")
    assert record["torch_version"] == torch.__version__
    assert record["hostname"]
    assert record["created_utc"].endswith("+00:00")
    assert record["command"] == "train"
    assert record["git_commit"] is None or len(record["git_commit"]) == 40


def test_plan_property_uses_the_preprocessing_module(bundle_dir, monkeypatch):
    # Stand-in for edgepanc.preprocessing.plan so this test does not depend on its details.
    class FakePlan:
        def __init__(self, data):
            self.data = data

        @classmethod
        def from_dict(cls, data):
            return cls(data)

    module = types.ModuleType("edgepanc.preprocessing.plan")
    module.PreprocessingPlan = FakePlan
    monkeypatch.setitem(sys.modules, "edgepanc.preprocessing.plan", module)
    plan = load_bundle(bundle_dir).plan
    assert isinstance(plan, FakePlan) and plan.data == PLAN


def test_invalid_preprocessing_is_a_bundle_error(bundle_dir, monkeypatch):
    class RejectingPlan:
        @classmethod
        def from_dict(cls, data):
            raise ValueError("patch_size must be 3 positive integers")

    module = types.ModuleType("edgepanc.preprocessing.plan")
    module.PreprocessingPlan = RejectingPlan
    monkeypatch.setitem(sys.modules, "edgepanc.preprocessing.plan", module)
    with pytest.raises(BundleError, match="model.json: preprocessing: patch_size must be"):
        load_bundle(bundle_dir).plan  # noqa: B018 - the property access is the test


def test_bundle_stores_the_activation_footprint_for_the_runtime(bundle_dir):
    from edgepanc.networks.activation import network_activation_bytes_per_voxel

    stored = _model_json(bundle_dir)["activation_bytes_per_voxel"]
    expected = network_activation_bytes_per_voxel(PRESETS["tiny"], PLAN["patch_size"])
    assert stored == pytest.approx(expected) and stored > 0
    assert load_bundle(bundle_dir).activation_bytes_per_voxel == pytest.approx(expected)


@pytest.mark.parametrize("value", [0, -3.0, "large", True])
def test_invalid_activation_footprint_is_a_bundle_error(bundle_dir, value):
    data = _model_json(bundle_dir)
    data["activation_bytes_per_voxel"] = value
    (bundle_dir / "model.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="activation_bytes_per_voxel"):
        load_bundle(bundle_dir)


def test_lesion_margins_round_trip_and_older_bundles_have_none(bundle_dir):
    assert load_bundle(bundle_dir).lesion_margins_mm == ()
    bundle = load_bundle(bundle_dir)
    bundle.lesion_margins_mm = (0.0, 1.5, 2.5)
    save_bundle_metadata(bundle)
    assert _model_json(bundle_dir)["lesion_margins_mm"] == [0.0, 1.5, 2.5]
    assert load_bundle(bundle_dir).lesion_margins_mm == (0.0, 1.5, 2.5)
    data = _model_json(bundle_dir)
    del data["lesion_margins_mm"]  # a bundle written before margins existed
    (bundle_dir / "model.json").write_text(json.dumps(data))
    assert load_bundle(bundle_dir).lesion_margins_mm == ()


@pytest.mark.parametrize(
    "value", [[0.0, 1.0], [0.0, -1.0, 2.0], [0, 0, float("nan")], [0, 0, 25], [0, True, 0], 2.0]
)
def test_invalid_lesion_margins_are_a_bundle_error(bundle_dir, value):
    data = _model_json(bundle_dir)
    data["lesion_margins_mm"] = value
    (bundle_dir / "model.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="lesion_margins_mm") as error:
        load_bundle(bundle_dir)
    assert "\n" not in str(error.value)


def test_reading_a_bundle_does_not_import_torch(bundle_dir):
    code = (
        "import sys; from edgepanc.bundle import load_bundle; "
        f"b = load_bundle({str(bundle_dir)!r}); print(b.network.features, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False", out.stdout
