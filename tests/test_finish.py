"""The one finishing step: clean the labels, limit the soft maps to them, read the subtype.

``edgepanc run``, the baseline and validation all finish through
:func:`edgepanc.postprocessing.finish_prediction`; on the same scan and predictor they give the
same mask and the same subtype probabilities.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from edgepanc.inferers.probabilities import RegionProbabilities
from edgepanc.inferers.sliding_window import SlidingWindowResult
from edgepanc.postprocessing import (
    DEFAULT_POSTPROCESS,
    finish_prediction,
    mask_region_probabilities,
    postprocess_labels,
)

from runtime_support import TINY_PLAN, ThresholdPredictor, phantom, threshold_model, write_image

SPACING = (1.0, 1.0, 1.0)


def _raw_result() -> SlidingWindowResult:
    """Three 8^3 tiles along x. The gland (with a 12-voxel lesion) lies in tiles 1-2; a 48-voxel
    false lesion far from it lies in tile 0, which names subtype 0; tile 2 names subtype 2."""
    labels = np.zeros((8, 8, 24), dtype=np.uint8)
    labels[1:7, 1:7, 12:23] = 1
    labels[3:5, 3:5, 17:20] = 2
    labels[2:6, 2:6, 0:3] = 2
    values = np.zeros((2, *labels.shape), dtype=np.uint8)
    values[0][labels >= 1] = 255
    values[1][labels == 2] = 255
    return SlidingWindowResult(
        labels=labels,
        tile_cls_logits=np.array([[4.0, 0, 0], [0, 0, 0], [0, 0, 4.0]], dtype=np.float32),
        tiles=[(0, 0, 0), (0, 0, 8), (0, 0, 16)],
        probabilities=RegionProbabilities(values, tuple(slice(0, s) for s in labels.shape)),  # type: ignore[arg-type]
        importance=np.ones((8, 8, 8), dtype=np.float32),
    )


def test_finishing_cleans_the_labels_and_reads_the_subtype_from_the_kept_lesion():
    raw = _raw_result()
    finished = finish_prediction(raw, SPACING)
    assert not finished.labels[:, :, :8].any()  # the false lesion is gone
    assert np.count_nonzero(finished.labels == 2) == 12
    assert not finished.region_probabilities.values[:, :, :, :8].any()  # and not restored back
    assert finished.subtype == 2
    expected = postprocess_labels(raw.labels, SPACING, DEFAULT_POSTPROCESS)
    np.testing.assert_array_equal(finished.labels, expected)
    np.testing.assert_array_equal(
        finished.region_probabilities.values,
        mask_region_probabilities(raw.probabilities, expected).values,  # type: ignore[arg-type]
    )
    assert finished.subtype_probabilities.sum() == pytest.approx(1.0)


def test_finishing_without_postprocessing_keeps_the_raw_labels():
    raw = _raw_result()
    finished = finish_prediction(raw, SPACING, None)
    np.testing.assert_array_equal(finished.labels, raw.labels)
    assert finished.subtype == 0  # the false lesion outweighs the true one, 48 voxels to 12


def test_finishing_needs_the_soft_maps():
    raw = _raw_result()
    raw.probabilities = None
    with pytest.raises(ValueError, match="keep_probabilities"):
        finish_prediction(raw, SPACING)


def test_run_baseline_and_validation_finish_alike(tmp_path, monkeypatch):
    """Same scan, same predictor, same tiles (ROI off, step 0.5, Gaussian weights): the runtime,
    the baseline and validation write the same mask and name the same subtype probabilities."""
    from edgepanc.io.volume import read_image
    from edgepanc.preprocessing import preprocess_image, restore_label
    from edgepanc.runtime import baseline
    from edgepanc.runtime.pipeline import RunConfig, run_case
    from edgepanc.runtime.roi import RoiConfig
    from edgepanc.thermal import ThermalGuard
    from edgepanc.training.validation import predict_with

    from runtime_support import make_tiny_bundle

    scan = write_image(phantom(), tmp_path / "ct_0000.nii.gz")
    (tmp_path / "run").mkdir()
    runtime = run_case(
        scan,
        threshold_model(),
        RunConfig(out_dir=tmp_path / "run", roi=RoiConfig(mode="off")),
        ThermalGuard([]),
    )
    monkeypatch.setattr(baseline, "load_baseline_predictor", lambda bundle: ThresholdPredictor())
    reference = baseline.run_baseline(
        scan, make_tiny_bundle(tmp_path / "bundle"), tmp_path / "baseline"
    )
    volume, grid = preprocess_image(read_image(scan), TINY_PLAN)
    validated = predict_with(
        ThresholdPredictor(), volume, TINY_PLAN.target_spacing, TINY_PLAN.patch_size
    )

    def mask(path) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

    run_mask = mask(runtime.mask)
    assert np.count_nonzero(run_mask == 1) > 0 and np.count_nonzero(run_mask == 2) > 0
    np.testing.assert_array_equal(mask(reference.mask), run_mask)
    restored = restore_label(validated.labels, grid, validated.region_probabilities)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), run_mask)
    assert reference.probabilities == runtime.probabilities
    np.testing.assert_allclose(validated.subtype_probabilities, runtime.probabilities, atol=1e-6)
    assert runtime.subtype == reference.subtype == validated.subtype == 1
