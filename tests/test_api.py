"""The Python API: edgepanc.segment gives what `edgepanc run` writes, without writing anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import edgepanc
from edgepanc.errors import BudgetError, InputError

from runtime_support import make_onnx_bundle, phantom, run_cli, threshold_model, write_image


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    return make_onnx_bundle(tmp_path_factory.mktemp("api") / "bundle")


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*"))


def test_segment_gives_the_mask_and_numbers_edgepanc_run_writes(onnx_bundle, tmp_path):
    scan = write_image(phantom(), tmp_path / "scan" / "ct_0000.nii.gz")
    out = tmp_path / "out"
    assert run_cli("run", scan, "--model", onnx_bundle, "--out", out, "--device", "cpu").exit_code == 0
    written = sitk.ReadImage(str(out / "ct.nii.gz"))
    case = json.loads((out / "ct.json").read_text())

    model = edgepanc.load_bundle(onnx_bundle, device="cpu")
    result = edgepanc.segment(scan, model=model)

    assert np.array_equal(result.mask_array(), sitk.GetArrayFromImage(written))
    assert result.mask.GetSize() == written.GetSize()
    assert np.allclose(result.mask.GetSpacing(), written.GetSpacing())
    assert np.allclose(result.mask.GetOrigin(), written.GetOrigin())
    assert np.allclose(result.mask.GetDirection(), written.GetDirection())
    for key in ("lesion_diameter_mm", "pancreas_mean_hu", "lesion_mean_hu", "lesion_found"):
        assert getattr(result, key) == case[key], key
    assert result.pancreas_volume_ml == case["pancreas_volume_ml"]
    assert result.lesion_volume_ml == case["lesion_volume_ml"]
    assert result.subtype == case["subtype"]
    assert result.probabilities == pytest.approx(case["probabilities"], abs=1e-6)
    assert (result.backend, result.model_id) == (case["backend"], case["model_id"])
    assert {"preprocess", "fine", "postprocess", "restore", "measure"} <= set(result.timings_s)


def test_segment_in_memory_writes_no_file_and_matches_the_path(
    onnx_bundle, tmp_path, monkeypatch
):
    image = phantom()
    scan = write_image(image, tmp_path / "scan" / "ct_0000.nii.gz")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    model = edgepanc.load_bundle(str(onnx_bundle), device="cpu")  # loaded once, used twice
    before = files_under(tmp_path)
    from_memory = edgepanc.segment(image, model=model)
    from_path = edgepanc.segment(scan, model=model)
    assert files_under(tmp_path) == before and files_under(work) == []
    assert np.array_equal(from_memory.mask_array(), from_path.mask_array())
    assert from_memory.probabilities == from_path.probabilities
    assert "read" in from_path.timings_s and "read" not in from_memory.timings_s
    assert image.GetDirection() == phantom().GetDirection()  # the caller's image is left alone


def test_no_lesion_means_no_subtype_but_the_heads_probabilities():
    model = threshold_model()
    with_lesion = edgepanc.segment(phantom(), model=model)
    without = edgepanc.segment(phantom(with_lesion=False), model=model)
    assert with_lesion.lesion_found and with_lesion.subtype == 1
    assert with_lesion.subtype == int(np.argmax(with_lesion.probabilities))
    assert with_lesion.lesion_volume_ml == pytest.approx(
        np.count_nonzero(with_lesion.mask_array() == 2) * np.prod(phantom().GetSpacing()) / 1000
    )
    assert not without.lesion_found and without.subtype is None
    assert with_lesion.lesion_diameter_mm > 0 and without.lesion_diameter_mm is None
    assert with_lesion.lesion_mean_hu > with_lesion.pancreas_mean_hu  # the lesion is brighter
    assert without.lesion_volume_ml == 0.0 and without.pancreas_volume_ml > 0
    assert len(without.probabilities) == 3 and sum(without.probabilities) == pytest.approx(1.0)


def test_segment_options_reach_the_pipeline():
    model = threshold_model()
    whole = edgepanc.segment(phantom(), model=model, roi="off", tile_batch=1)
    assert "coarse" not in whole.timings_s
    assert "coarse" in edgepanc.segment(phantom(), model=model, roi="on").timings_s
    kept_all = edgepanc.segment(phantom(), model=model, largest_component=False, roi="off")
    assert kept_all.pancreas_volume_ml >= whole.pancreas_volume_ml
    with pytest.raises(BudgetError, match="memory budget 10 MB is too small"):
        edgepanc.segment(phantom(), model=model, memory_budget="10MB")


def test_an_image_that_is_not_a_scalar_3d_volume_is_refused_in_one_line():
    flat = sitk.Image([16, 16], sitk.sitkInt16)
    with pytest.raises(InputError, match="2D image"):
        edgepanc.segment(flat, model=threshold_model())


def test_importing_edgepanc_loads_neither_torch_nor_the_runtime():
    code = (
        "import sys, edgepanc; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'SimpleITK', 'onnxruntime', 'numpy') or m.startswith('edgepanc.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['edgepanc.version']"  # the version alone, a leaf module
    assert {"segment", "load_bundle", "Result"} <= set(dir(edgepanc))
    with pytest.raises(AttributeError):
        edgepanc.no_such_name  # noqa: B018
