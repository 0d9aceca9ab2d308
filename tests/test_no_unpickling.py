"""Nothing is ever unpickled: a malicious ``last.pt``, ``weights.pt`` or artifact runs no code.

Each file below is made with ``torch.save({'x': Evil(...)})``, whose ``__reduce__`` would create a
marker file on load. Every command refuses it with one line and the marker never appears.
"""

from __future__ import annotations

import json
import pathlib
import re
from pathlib import Path

import pytest
import torch
from hostile_support import cli, one_error_line

from edgepanc.bundle import load_bundle
from edgepanc.errors import BundleError

from runtime_support import make_tiny_bundle, phantom, write_image
from train_support import write_tiny_dataset

PACKAGE = Path(__file__).resolve().parents[1] / "edgepanc"
TRAIN_FLAGS = ["--set", "preset=tiny", "--set", "patch_size=16", "--set", "target_spacing=2"]
TRAIN_FLAGS += ["--set", "epochs=1", "--set", "steps_per_epoch=1", "--set", "warmup_epochs=0"]
TRAIN_FLAGS += ["--device", "cpu", "--threads", "1", "--seed", "3"]


class Evil:
    """Unpickling it touches ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def save_evil(path: Path, marker: Path) -> None:
    torch.save({"x": Evil(marker)}, path)
    assert not marker.exists()  # saving runs nothing; only loading would


def test_a_malicious_last_pt_is_refused_on_resume_and_runs_nothing(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    run = tmp_path / "run"
    result = cli("train", "--data", data, "--out", run, *TRAIN_FLAGS)
    assert result.exit_code == 0, result.output
    # The genuine checkpoints hold tensors and plain values only.
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert last["state"]["epoch"] == 1 and best["state"]["best_epoch"] == 1
    marker = tmp_path / "ran"
    save_evil(run / "last.pt", marker)
    line = one_error_line(cli("train", "--data", data, "--out", run, *TRAIN_FLAGS, "--resume"))
    assert "last.pt" in line and "not an edgepanc training checkpoint" in line
    assert not marker.exists()


def test_a_pickled_weights_pt_is_refused_when_loading_the_bundle(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    marker = tmp_path / "ran"
    save_evil(bundle / "weights.pt", marker)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle).load_network()
    message = str(info.value)
    assert "weights.pt" in message and "not a plain state dict" in message
    assert "\n" not in message and "weights_only" not in message
    assert not marker.exists()


def set_artifacts(bundle: Path, artifacts: dict, default: str | None = None) -> Path:
    """Write ``artifacts`` (and ``default_artifact``) into the bundle's model.json."""
    meta_path = bundle / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["artifacts"], meta["default_artifact"] = artifacts, default
    meta_path.write_text(json.dumps(meta))
    return meta_path


@pytest.mark.parametrize("file", ["weights.pt", "pruned.pt"])
def test_run_backend_torch_on_a_pickled_torch_file_is_one_line(tmp_path: Path, file: str) -> None:
    from edgepanc.networks import PRESETS

    bundle = make_tiny_bundle(tmp_path / "bundle")
    marker = tmp_path / "ran"
    save_evil(bundle / file, marker)
    if file == "pruned.pt":  # a torch artifact with weights of its own, the bundle's default
        record = {"file": file, "backend": "torch", "precision": "fp32", "device": "cpu"}
        set_artifacts(bundle, {"pruned": record | {"network": PRESETS["tiny"].to_dict()}}, "pruned")
    scan = write_image(phantom(), tmp_path / "scan.nii.gz")
    args = ["--model", bundle, "--out", tmp_path / "out", "--backend", "torch", "--device", "cpu"]
    line = one_error_line(cli("run", scan, *args))
    assert file in line and "not a plain state dict" in line
    assert not marker.exists()


def test_init_from_a_pickled_weights_pt_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    bundle = make_tiny_bundle(tmp_path / "bundle")
    marker = tmp_path / "ran"
    save_evil(bundle / "weights.pt", marker)
    out = tmp_path / "run"
    flags = TRAIN_FLAGS[:4] + TRAIN_FLAGS[6:]  # without target_spacing: the bundle's
    line = one_error_line(cli("train", "--data", data, "--out", out, "--init-from", bundle, *flags))
    assert "weights.pt" in line and "not a plain state dict" in line
    assert not marker.exists()
    assert not out.exists()


@pytest.mark.parametrize(
    ("file", "words"),
    [
        ("/etc/hostname", "absolute"),
        ("../elsewhere/model.onnx", "inside the bundle"),
        ("sub/../../model.onnx", "inside the bundle"),
    ],
)
def test_bundle_artifact_paths_stay_inside_the_bundle(
    tmp_path: Path, file: str, words: str
) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    record = {"file": file, "backend": "onnxruntime", "precision": "int8"}
    meta_path = set_artifacts(bundle, {"int8": record})
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    assert info.value.path == meta_path
    assert file in str(info.value) and words in str(info.value)


def test_a_bundle_artifact_linking_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle")
    (tmp_path / "secret.onnx").write_bytes(b"onnx")
    (bundle / "model_int8.onnx").symlink_to(tmp_path / "secret.onnx")
    record = {"file": "model_int8.onnx", "backend": "onnxruntime", "precision": "int8"}
    set_artifacts(bundle, {"int8": record})
    with pytest.raises(BundleError, match="model_int8.onnx.*outside the bundle"):
        load_bundle(bundle)


def test_the_package_never_unpickles() -> None:
    unsafe = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|allow_pickle\s*=\s*True")
    torch_load = re.compile(r"torch\.load\((?P<args>[^)]*)\)")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        found += [f"{path}: {m.group(0)}" for m in unsafe.finditer(text)]
        found += [
            f"{path}: {m.group(0)}"
            for m in torch_load.finditer(text)
            if "weights_only=True" not in m.group("args")
        ]
    assert not found, found
