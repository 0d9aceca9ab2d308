"""Unit tests of the training stage's pure parts: losses, sampling, augmentation, schedule, folds."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepanc.training.augmentation import (
    AugmentationConfig,
    augment_intensity,
    random_displacement_mm,
    random_spatial_matrix,
    simulate_low_resolution,
)
from edgepanc.training.config import TrainConfig
from edgepanc.training.dataset import PreparedCase, sample_coordinates
from edgepanc.training.kfold import stratified_folds, summarize_folds
from edgepanc.training.losses import LossWeights, multitask_loss, soft_dice_loss
from edgepanc.training.sampling import (
    PatchSampler,
    SamplingConfig,
    balanced_case_weights,
    extract_patch,
    lesion_diameters_mm,
    size_balanced_case_weights,
)
from edgepanc.training.schedule import teacher_forcing_share, warmup_cosine_factor

REPO = Path(__file__).resolve().parents[1]


def _case(
    subtype: int, with_lesion: bool = True, shape: tuple[int, int, int] = (16, 24, 24)
) -> PreparedCase:
    image = np.random.default_rng(subtype).normal(size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[4:12, 6:18, 6:18] = 1
    if with_lesion:
        label[7:9, 10:13, 10:13] = 2
    return PreparedCase(
        case_id=f"c{subtype}",
        subtype=subtype,
        image=image,
        label=label,
        spacing=(2.0, 1.0, 1.0),
        grid=None,
        label_path=None,
        lesion_coords=sample_coordinates(label == 2, 1000),
        foreground_coords=sample_coordinates(label > 0, 1000),
        background=-3.0,
    )


def test_dice_loss_is_zero_for_a_perfect_prediction_and_high_for_a_wrong_one() -> None:
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    target[:, 1:3, 1:3, 1:3] = 1
    target[:, 2, 2, 2] = 2
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 4, 1, 2, 3).float() * 50
    wrong = torch.roll(perfect, shifts=1, dims=1)
    assert soft_dice_loss(perfect, target) < 1e-3
    assert soft_dice_loss(wrong, target) > 0.9


def _one_hot_logits(label: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(label, 3).permute(0, 4, 1, 2, 3).float() * 50


def test_sample_lesion_dice_weighs_a_missed_small_lesion_like_a_large_one() -> None:
    # Patch 0: a 4^3 lesion, found; patch 1: a single lesion voxel, missed (called pancreas);
    # patch 2: no lesion and no false lesion. Pancreas and whole regions are perfect.
    target = torch.ones(3, 6, 6, 6, dtype=torch.long)
    target[0, 1:5, 1:5, 1:5] = 2
    target[1, 3, 3, 3] = 2
    prediction = target.clone()
    prediction[1, 3, 3, 3] = 1
    logits = _one_hot_logits(prediction)
    batch = float(soft_dice_loss(logits, target))
    sample = float(soft_dice_loss(logits, target, lesion_dice="sample"))
    # Batch Dice of the lesion: 2 * 64 / (64 + 65); pancreas (reference 152 + 215 + 216 voxels,
    # prediction one more): 2 * 583 / (583 + 584).
    pancreas = 2 * 583 / (583 + 584)
    assert batch == pytest.approx(1 - (pancreas + 128 / 129 + 1) / 3, abs=1e-4)
    # Per patch with lesion: (1 + 0) / 2; the lesion-free patch does not count.
    assert sample == pytest.approx(1 - (pancreas + 0.5 + 1) / 3, abs=1e-4)
    # Without lesion anywhere both modes are the batch Dice.
    empty = torch.ones(2, 4, 4, 4, dtype=torch.long)
    noisy = torch.randn(2, 3, 4, 4, 4)
    assert float(soft_dice_loss(noisy, empty, lesion_dice="sample")) == pytest.approx(
        float(soft_dice_loss(noisy, empty))
    )
    with pytest.raises(ValueError, match="lesion_dice"):
        soft_dice_loss(logits, target, lesion_dice="mean")


def test_lesion_recall_weight_is_a_tversky_index_that_weighs_misses_over_false_voxels() -> None:
    # Lesion and background only, so the pancreas term is 1 and the whole term is the lesion's
    # plain Dice; the lesion term is TP / (TP + (1 - b) FP + b FN).
    target = torch.zeros(2, 4, 6, 6, dtype=torch.long)
    target[:, 1:3, 1:5, 1:5] = 2  # 32 lesion voxels per patch
    missed = target.clone()
    missed[:, 1, 1:5, 1:5] = 0  # half the lesion missed: TP 16, FN 16
    grown = target.clone()
    grown[:, 3, 1:5, 1:5] = 2  # all found plus 16 false voxels: TP 32, FP 16

    def expected(tp: int, fp: int, fn: int, beta: float) -> float:
        tversky = tp / (tp + (1 - beta) * fp + beta * fn)
        return 1 - (1 + tversky + 2 * tp / (2 * tp + fp + fn)) / 3

    for prediction, (tp, fp, fn) in ((missed, (16, 0, 16)), (grown, (32, 16, 0))):
        logits = _one_hot_logits(prediction)
        for beta in (0.3, 0.5, 0.7):
            for mode in ("batch", "sample"):
                loss = soft_dice_loss(logits, target, lesion_dice=mode, lesion_recall_weight=beta)
                assert float(loss) == pytest.approx(expected(tp, fp, fn, beta), abs=1e-4)
    # beta 0.5 is the Dice term to the last bit; above it a miss costs more than a false voxel.
    noisy = torch.randn(2, 3, 4, 6, 6)
    assert torch.equal(
        soft_dice_loss(noisy, target, lesion_recall_weight=0.5), soft_dice_loss(noisy, target)
    )
    miss, grow = _one_hot_logits(missed), _one_hot_logits(grown)
    assert soft_dice_loss(miss, target, lesion_recall_weight=0.7) > soft_dice_loss(miss, target)
    assert soft_dice_loss(grow, target, lesion_recall_weight=0.7) < soft_dice_loss(grow, target)
    for beta in (0.0, 1.0):
        with pytest.raises(ValueError, match="lesion_recall_weight"):
            soft_dice_loss(noisy, target, lesion_recall_weight=beta)


def test_subtype_loss_counts_only_patches_with_lesion() -> None:
    seg = torch.zeros(2, 3, 4, 4, 4, requires_grad=True)
    cls = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    subtype = torch.tensor([0, 0])
    _, _, no_lesion = multitask_loss(seg, cls, target, subtype, LossWeights())
    assert float(no_lesion.detach()) == 0.0
    target[1, 0, 0, 0] = 2  # only the second (wrongly classified) patch has lesion
    total, seg_loss, cls_loss = multitask_loss(
        seg, cls, target, subtype, LossWeights(seg=1.0, cls=2.0)
    )
    expected = float(torch.nn.functional.cross_entropy(cls[1:].detach(), subtype[1:]))
    assert float(cls_loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(total.detach()) == pytest.approx(
        float(seg_loss.detach()) + 2.0 * expected, rel=1e-5
    )
    total.backward()
    assert cls.grad is not None and float(cls.grad[0].abs().sum()) == 0.0


def test_deep_supervision_loss_accepts_lower_resolutions() -> None:
    target = torch.randint(0, 3, (1, 8, 8, 8))
    outputs = [torch.randn(1, 3, 8, 8, 8), torch.randn(1, 3, 4, 4, 4)]
    total, seg, _ = multitask_loss(
        outputs, torch.randn(1, 3), target, torch.tensor([1]), LossWeights()
    )
    assert math.isfinite(float(total)) and float(seg) > 0


def test_balanced_case_weights_give_each_subtype_equal_mass() -> None:
    weights = balanced_case_weights([0] * 62 + [1] * 106 + [2] * 84)
    masses = [weights[:62].sum(), weights[62:168].sum(), weights[168:].sum()]
    assert masses == pytest.approx([1 / 3] * 3)


def test_sampler_centres_the_lesion_share_on_lesions_and_is_reproducible_per_epoch() -> None:
    cases = [_case(0), _case(1), _case(2)]
    sampling = SamplingConfig((8, 8, 8), lesion_fraction=1.0, pancreas_fraction=0.0)
    sampler = PatchSampler(cases, sampling, AugmentationConfig.disabled(), seed=3)
    sampler.start_epoch(2)
    batch = sampler.sample_batch(12)
    assert batch["image"].shape == (12, 1, 8, 8, 8) and batch["label"].shape == (12, 8, 8, 8)
    # jitter is at most a quarter patch, so every lesion-centred patch holds lesion voxels
    assert all((label == 2).any() for label in batch["label"])
    sampler.start_epoch(2)
    again = sampler.sample_batch(12)
    np.testing.assert_array_equal(batch["image"], again["image"])
    sampler.start_epoch(3)
    assert not np.array_equal(batch["image"], sampler.sample_batch(12)["image"])


def test_sampler_falls_back_to_pancreas_without_lesion() -> None:
    sampler = PatchSampler(
        [_case(1, with_lesion=False)],
        SamplingConfig((8, 8, 8), 1.0, 0.0),
        AugmentationConfig.disabled(),
    )
    assert all((label > 0).any() for label in sampler.sample_batch(6)["label"])


def test_identity_transform_is_an_exact_crop_and_rotation_keeps_labels_integral() -> None:
    case = _case(0)
    centre = np.array([8.0, 12.0, 12.0])
    image, label = extract_patch(case, centre, (8, 8, 8), np.eye(3))
    np.testing.assert_array_equal(image, case.image[4:12, 8:16, 8:16])
    np.testing.assert_array_equal(label, case.label[4:12, 8:16, 8:16])
    rng = np.random.default_rng(0)
    config = AugmentationConfig(
        rotation_probability=1.0, rot90_probability=1.0, zoom_out_probability=1.0
    )
    matrix = random_spatial_matrix(rng, config)
    assert np.linalg.det(matrix) == pytest.approx(config.zoom_out_factor**3)  # zoom-out, no shear
    _, rotated = extract_patch(case, centre, (8, 8, 8), matrix)
    assert set(np.unique(rotated)) <= {0, 1, 2}


def test_zoom_out_shrinks_the_structure_in_the_patch() -> None:
    case = _case(0, shape=(32, 48, 48))
    case.label[:] = 0
    case.label[12:20, 16:32, 16:32] = 1
    centre = np.array([15.5, 23.5, 23.5])
    _, plain = extract_patch(case, centre, (16, 32, 32), np.eye(3))
    _, zoomed = extract_patch(case, centre, (16, 32, 32), np.eye(3) * 2.0)
    assert (plain == 1).sum() == pytest.approx(8 * (zoomed == 1).sum(), rel=0.2)


def test_intensity_augmentation_changes_values_but_not_shape() -> None:
    patch = np.random.default_rng(1).normal(size=(4, 8, 8)).astype(np.float32)
    config = AugmentationConfig(
        intensity_scale_probability=1,
        intensity_shift_probability=1,
        gamma_probability=1,
        noise_probability=1,
        blur_probability=1,
    )
    out = augment_intensity(patch, np.random.default_rng(0), config)
    assert out.shape == patch.shape and out.dtype == np.float32 and not np.allclose(out, patch)
    untouched = augment_intensity(patch, np.random.default_rng(0), AugmentationConfig.disabled())
    np.testing.assert_array_equal(untouched, patch)


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine_factor(s, 10, 110) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] < 0.02


def test_stratified_folds_cover_every_case_once_and_keep_subtype_shares() -> None:
    ids = [f"c{i}" for i in range(30)]
    subtypes = [0] * 6 + [1] * 15 + [2] * 9
    folds = stratified_folds(ids, subtypes, 3, seed=1)
    validated = [c for f in folds for c in f["validation"]]
    assert sorted(validated) == sorted(ids)
    for fold in folds:
        assert set(fold["train"]).isdisjoint(fold["validation"])
        val_subtypes = [subtypes[ids.index(c)] for c in fold["validation"]]
        assert [val_subtypes.count(s) for s in range(3)] == [2, 5, 3]
    summary = summarize_folds([{"whole_dsc": 0.8}, {"whole_dsc": 1.0}])
    assert summary["whole_dsc"]["mean"] == pytest.approx(0.9)


def test_config_identity_ignores_paths_and_device_but_not_the_experiment() -> None:
    base = TrainConfig(data="a", out="b")
    assert base.identity() == base.replace(data="c", out="d", device="cpu", epochs=99).identity()
    assert base.identity() != base.replace(lr=1e-4).identity()


def test_no_deprecated_cuda_amp_anywhere_in_the_repository() -> None:
    needle = "torch.cuda" + ".amp"  # built so this file does not contain it
    offenders = []
    for path in REPO.rglob("*"):
        parts = set(path.relative_to(REPO).parts)
        if parts & {".venv", ".git", "__pycache__", "node_modules"} or not path.is_file():
            continue
        text_file = path.suffix in {".py", ".md", ".toml", ".txt", ".cfg", ".sh", ".yml", ".yaml"}
        if text_file and needle in path.read_text(errors="ignore"):
            offenders.append(str(path))
    assert offenders == []


def test_background_workers_draw_each_step_from_their_own_stream_in_step_order() -> None:
    import copy

    from edgepanc.training.batches import epoch_batches

    cases = [_case(0), _case(1), _case(2)]
    sampler = PatchSampler(cases, SamplingConfig((8, 8, 8)), AugmentationConfig(), seed=5)
    drawn = [b["image"] for b in epoch_batches(sampler, epoch=4, steps=5, batch_size=2, workers=2)]
    assert len(drawn) == 5
    # worker w draws steps w, w + 2, ... from the stream (seed, epoch, rank, w + 1)
    expected = [None] * 5
    for worker in (0, 1):
        own = copy.deepcopy(sampler)
        own.start_epoch(4, worker=worker + 1)
        for step in range(worker, 5, 2):
            expected[step] = own.sample_batch(2)["image"]
    for got, want in zip(drawn, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    again = [b["image"] for b in epoch_batches(sampler, epoch=4, steps=5, batch_size=2, workers=2)]
    np.testing.assert_array_equal(np.stack(drawn), np.stack(again))
    # without workers: the training process's own stream, as before the option existed
    sampler.start_epoch(4)
    inline = [b["image"] for b in epoch_batches(sampler, epoch=4, steps=2, batch_size=2)]
    sampler.start_epoch(4)
    np.testing.assert_array_equal(inline[0], sampler.sample_batch(2)["image"])


def test_worker_count_is_part_of_the_experiment_but_zero_keeps_old_identities() -> None:
    base = TrainConfig(data="d", out="o")
    # the identity of this config before --workers existed (commit 89d4ad7): old runs resume
    assert base.identity() == "f6cf5c32da60ae98"
    assert base.identity() != TrainConfig(data="d", out="o", workers=2).identity()
    assert base.to_dict()["workers"] == 0


def test_sample_lesion_dice_is_another_experiment_but_batch_keeps_old_identities() -> None:
    base = TrainConfig(data="d", out="o")
    assert base.identity() == "f6cf5c32da60ae98"  # as before --lesion-dice existed
    assert base.identity() != base.replace(lesion_dice="sample").identity()
    with pytest.raises(ValueError, match="lesion_dice"):
        base.replace(lesion_dice="mean")


def test_lesion_recall_weight_is_another_experiment_but_dice_keeps_old_identities() -> None:
    base = TrainConfig(data="d", out="o")
    assert base.identity() == "f6cf5c32da60ae98"  # as before lesion_recall_weight existed
    assert base.identity() != base.replace(lesion_recall_weight=0.7).identity()
    for beta in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="lesion_recall_weight"):
            base.replace(lesion_recall_weight=beta)


def test_sampler_hands_out_the_patch_before_intensity_augmentation_on_request() -> None:
    cases = [_case(0), _case(1), _case(2)]
    sampling = SamplingConfig((8, 8, 8), lesion_fraction=1.0, pancreas_fraction=0.0)
    augmentation = dataclasses.replace(
        AugmentationConfig.disabled(), intensity_shift_probability=1.0, rotation_probability=1.0
    )
    plain = PatchSampler(cases, sampling, augmentation, seed=5)
    keeping = PatchSampler(cases, sampling, augmentation, seed=5, keep_clean_image=True)
    plain.start_epoch(1)
    keeping.start_epoch(1)
    a, b = plain.sample_batch(4), keeping.sample_batch(4)
    assert "clean_image" not in a and b["clean_image"].shape == b["image"].shape
    # The same stream either way: asking for the clean patch changes no batch.
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    # A shift moves every voxel by one constant per patch; the clean patch is the one before it.
    shift = (b["image"] - b["clean_image"]).reshape(4, -1)
    assert np.all(np.abs(shift).max(axis=1) > 0)
    np.testing.assert_allclose(shift, shift[:, :1].repeat(shift.shape[1], axis=1), atol=1e-5)


def test_teacher_forcing_is_constant_by_default_and_linear_to_its_end_value() -> None:
    assert [teacher_forcing_share(s, 10, 0.5, None) for s in (0, 4, 9)] == [0.5, 0.5, 0.5]
    shares = [teacher_forcing_share(s, 10, 0.5, 0.0) for s in range(10)]
    assert shares[0] == 0.5 and shares[-1] == 0.0
    assert shares == pytest.approx([0.5 - 0.5 * s / 9 for s in range(10)])
    assert teacher_forcing_share(25, 10, 0.5, 0.0) == 0.0  # past the planned steps: stays


def test_head_options_are_other_experiments_but_their_defaults_keep_old_identities() -> None:
    base = TrainConfig(data="d", out="o")
    assert base.identity() == "f6cf5c32da60ae98"  # as before these options existed
    assert base.identity() != base.replace(teacher_forcing_end=0.0).identity()
    assert base.identity() != base.replace(head_statistics="clean").identity()
    with pytest.raises(ValueError, match="head_statistics"):
        base.replace(head_statistics="raw")
    with pytest.raises(ValueError, match="teacher_forcing_end"):
        base.replace(teacher_forcing_end=1.5)


def test_lesion_jitter_shifts_grows_and_shrinks_only_the_lesion() -> None:
    from edgepanc.training.teacher import draw_lesion_jitter, jitter_lesion

    label = torch.zeros(4, 12, 12, 12, dtype=torch.long)
    label[:, 2:10, 2:10, 2:10] = 1
    label[:, 5:8, 5:8, 5:8] = 2
    label[3] = 1  # no lesion: left alone
    shifts = np.array([[1, 0, -1], [0, 0, 0], [0, 0, 0], [2, 2, 2]])
    radii = np.array([0, 1, -1, 1])
    out = jitter_lesion(label, shifts, radii)
    moved = torch.zeros(12, 12, 12, dtype=torch.bool)
    moved[6:9, 5:8, 4:7] = True
    assert torch.equal(out[0] == 2, moved)
    assert int((out[1] == 2).sum()) == 5**3  # dilated by one voxel
    assert int((out[2] == 2).sum()) == 1  # eroded to its centre
    assert torch.equal(out[3], label[3])
    # Lesion voxels the change removed became pancreas; the organ outside the lesion is kept.
    assert set(out[0][label[0] == 2].unique().tolist()) <= {1, 2}
    assert torch.equal((out[0] == 0), (label[0] == 0) & ~moved)
    single = torch.zeros(1, 6, 6, 6, dtype=torch.long)
    single[0, 3, 3, 3] = 2
    assert int((jitter_lesion(single, np.zeros((1, 3), int), np.array([-1])) == 2).sum()) == 1
    shifts, radii = draw_lesion_jitter(np.random.default_rng(0), 500, 2)
    assert shifts.min() == -2 and shifts.max() == 2 and radii.min() == -1 and radii.max() == 2


def test_teacher_mask_jitter_is_another_experiment_but_zero_keeps_old_identities() -> None:
    base = TrainConfig(data="d", out="o")
    assert base.identity() == "f6cf5c32da60ae98"
    assert base.identity() != base.replace(teacher_mask_jitter=2).identity()
    with pytest.raises(ValueError, match="teacher_mask_jitter"):
        base.replace(teacher_mask_jitter=-1)


def test_size_balance_draws_small_lesions_more_often_but_keeps_each_subtype_s_mass() -> None:
    subtypes = [0, 0, 0, 1, 1]
    diameters = [5.0, 10.0, 40.0, 8.0, float("nan")]
    plain = size_balanced_case_weights(subtypes, diameters, 0.0)
    np.testing.assert_allclose(plain, balanced_case_weights(subtypes))
    weights = size_balanced_case_weights(subtypes, diameters, 1.0)
    assert weights[:3].sum() == pytest.approx(0.5) and weights[3:].sum() == pytest.approx(0.5)
    # within subtype 0 the draw goes as 1 / diameter: 5 mm twice 10 mm, eight times 40 mm
    assert weights[0] / weights[1] == pytest.approx(2.0)
    assert weights[0] / weights[2] == pytest.approx(8.0)
    # a case without a lesion counts as its subtype's median lesion
    assert weights[3] == pytest.approx(weights[4])


def test_lesion_diameter_is_that_of_a_sphere_of_the_lesion_s_volume() -> None:
    case = _case(0)
    volume = 2 * 3 * 3 * 2.0  # 18 voxels of 2 x 1 x 1 mm
    expected = (6 * volume / math.pi) ** (1 / 3)
    no_lesion = _case(1, with_lesion=False)
    diameters = lesion_diameters_mm([case, no_lesion])
    assert diameters[0] == pytest.approx(expected) and math.isnan(diameters[1])


def test_sampler_with_size_balance_draws_the_small_lesion_case_more_often() -> None:
    small, large = _case(0), _case(0)
    large.label[large.label == 2] = 1
    large.label[5:11, 8:16, 8:16] = 2
    sampling = SamplingConfig((8, 8, 8), 1.0, 0.0, lesion_size_exponent=2.0)
    sampler = PatchSampler([small, large], sampling, AugmentationConfig.disabled(), seed=1)
    assert sampler.case_weights[0] > 3 * sampler.case_weights[1]
    even = PatchSampler([small, large], SamplingConfig((8, 8, 8), 1.0, 0.0), AugmentationConfig())
    np.testing.assert_allclose(even.case_weights, [0.5, 0.5])


def test_elastic_displacement_is_smooth_and_moves_the_patch_without_new_labels() -> None:
    config = AugmentationConfig(elastic_probability=1.0, elastic_sigma_mm=3.0)
    field = random_displacement_mm(np.random.default_rng(0), config, (16, 24, 24), (2.0, 1.0, 1.0))
    assert field is not None and field.shape == (3, 16, 24, 24) and field.dtype == np.float32
    assert 1.0 < float(field.std()) < 6.0
    # neighbouring voxels move together: a 24 mm control spacing leaves no jumps between voxels
    assert float(np.abs(np.diff(field, axis=3)).max()) < 1.0
    case = _case(0, shape=(32, 48, 48))
    centre = np.array([15.5, 23.5, 23.5])
    plain_image, plain = extract_patch(case, centre, (16, 24, 24), np.eye(3))
    image, label = extract_patch(case, centre, (16, 24, 24), np.eye(3), field)
    assert set(np.unique(label)) <= {0, 1, 2} and not np.array_equal(image, plain_image)
    never = AugmentationConfig()
    assert random_displacement_mm(np.random.default_rng(0), never, (16, 24, 24), (2, 1, 1)) is None


def test_low_resolution_simulation_blurs_fine_detail_and_keeps_the_mean() -> None:
    patch = np.random.default_rng(2).normal(size=(16, 32, 32)).astype(np.float32)
    config = AugmentationConfig(low_resolution_probability=1.0, low_resolution_zoom=(0.5, 0.5))
    coarse = simulate_low_resolution(patch, np.random.default_rng(0), config)
    assert coarse.shape == patch.shape and coarse.dtype == np.float32
    # white noise loses most of its voxel-to-voxel variation on a grid twice as coarse
    assert np.abs(np.diff(coarse, axis=2)).mean() < 0.6 * np.abs(np.diff(patch, axis=2)).mean()
    assert abs(float(coarse.mean()) - float(patch.mean())) < 0.05
    assert simulate_low_resolution(patch, np.random.default_rng(0), AugmentationConfig()) is patch


def test_options_that_are_off_draw_nothing_so_old_runs_replay_the_same_patches() -> None:
    cases = [_case(0), _case(1)]
    sampling = SamplingConfig((8, 8, 8))
    before = PatchSampler(cases, sampling, AugmentationConfig(), seed=4)
    now = PatchSampler(cases, sampling, AugmentationConfig(), seed=4)
    with_options = PatchSampler(
        cases,
        sampling,
        AugmentationConfig(elastic_probability=1.0, low_resolution_probability=1.0),
        seed=4,
    )
    for sampler in (before, now, with_options):
        sampler.start_epoch(1)
    first = before.sample_batch(4)["image"]
    np.testing.assert_array_equal(first, now.sample_batch(4)["image"])
    assert not np.array_equal(first, with_options.sample_batch(4)["image"])


def test_sampling_and_augmentation_options_are_other_experiments_but_off_keeps_identities() -> None:
    base = TrainConfig(data="d", out="o")
    assert base.identity() == "f6cf5c32da60ae98"  # as before these options existed
    for name in ("lesion_size_balance", "elastic_probability", "low_resolution_probability"):
        assert base.replace(**{name: 0.5}).identity() != base.identity()
    with pytest.raises(ValueError, match="lesion_size_balance"):
        base.replace(lesion_size_balance=-1.0)
    with pytest.raises(ValueError, match="elastic_probability"):
        base.replace(elastic_probability=1.5)
