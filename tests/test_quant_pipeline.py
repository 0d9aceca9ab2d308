"""`edgepanc quantize` end to end on a tiny trained bundle, and its refusals of bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from edgepanc.bundle import load_bundle
from edgepanc.cli import main

from train_support import train_tiny_bundle

PATCH = (16, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, bundle): a tiny quiz data set and a tiny model trained on it for two steps."""
    return train_tiny_bundle(tmp_path_factory.mktemp("quant"), PATCH)


@pytest.fixture(scope="module")
def quantized(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    data, bundle = trained
    before = fingerprint(bundle)
    out = tmp_path_factory.mktemp("out") / "bundle"
    result = quantize(
        "--model",
        bundle,
        "--data",
        data,
        "--out",
        out,
        "--prune",
        "0.5",
        "--int8",
        "both",
        "--calibration-cases",
        "3",
        "--calibration-method",
        "minmax",
        "--finetune-epochs",
        "1",
        "--qat-epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--latency-runs",
        "1",
        "--max-validation-cases",
        "1",
        "--device",
        "cpu",
    )
    return {"result": result, "out": out, "before": before, "after": fingerprint(bundle)}


def quantize(*args: object):
    return CliRunner().invoke(main, ["quantize", *map(str, args)])


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_quantize_writes_a_new_bundle_and_leaves_the_input_untouched(quantized: dict) -> None:
    assert quantized["result"].exit_code == 0, quantized["result"].output
    assert quantized["before"] == quantized["after"]
    bundle = load_bundle(quantized["out"])
    assert bundle.kind == "quantized"
    for name in ("quantization.json", "quantization.md", "quantization.png", "weights.pt"):
        assert (bundle.path / name).is_file()
    assert {
        "torch_fp32",
        "onnx_fp32",
        "onnx_int8_minmax",
        "onnx_int8_qat",
        "pruned_torch_fp32",
        "pruned_onnx_fp32",
        "pruned_onnx_int8_minmax",
    } <= set(bundle.artifacts)
    assert bundle.default_artifact in bundle.artifacts
    for record in bundle.artifacts.values():
        assert record["latency_ms"] > 0
        assert set(record["metrics"]) == {"whole_dsc", "lesion_dsc", "macro_f1"}
    assert "skipped TensorRT" in (bundle.path / "quantization.md").read_text()
    # INT8 placement was measured for both fp32 graphs, every layer timed both ways
    placement = json.loads((bundle.path / "quantization.json").read_text())["trials"]["int8_layers"]
    assert set(placement) == {"model_fp32.onnx", "pruned_fp32.onnx"}
    for entry in placement.values():
        assert entry["summary"].startswith("INT8 in ")
        assert entry["layers"] and all(layer["fp32_ms"] >= 0 for layer in entry["layers"])
    report = (bundle.path / "quantization.md").read_text()
    assert "## INT8 layer placement" in report and "`pruned_fp32.onnx`: INT8 in " in report
    assert not list(quantized["out"].parent.glob(".*staging"))
    # every variant kept the subtype it named per validation case, for the tolerance
    variants = json.loads((bundle.path / "quantization.json").read_text())["variants"]
    for record in variants:
        subtypes = record["metrics"]["subtypes_by_case"]
        assert len(subtypes) == 1 and set(subtypes.values()) <= {0, 1, 2}


def test_pruning_shrinks_parameters_flops_and_onnx_size(quantized: dict) -> None:
    bundle = load_bundle(quantized["out"])
    full, small = bundle.artifacts["onnx_fp32"], bundle.artifacts["pruned_onnx_fp32"]
    assert small["parameters"] < 0.5 * full["parameters"]
    assert small["flops"] < 0.5 * full["flops"]
    assert (bundle.path / small["file"]).stat().st_size < (
        bundle.path / full["file"]
    ).stat().st_size
    # The pruned torch artifact is a normal network: its record rebuilds it for every backend.
    assert bundle.artifacts["pruned_torch_fp32"]["network"]["features"] == [2, 4, 8]


def test_every_artifact_record_is_a_typed_variant(quantized: dict) -> None:
    """The bundle says what each variant is; its name and file follow from that record."""
    from edgepanc.quantization.variants import Variant

    bundle = load_bundle(quantized["out"])
    variants = {name: Variant.from_record(record) for name, record in bundle.artifacts.items()}
    for name, variant in variants.items():
        assert variant.name == name
        assert variant.file == bundle.artifacts[name]["file"]
        assert variant.pruned == ("network" in bundle.artifacts[name])
    assert variants["onnx_int8_minmax"].kind == "ptq"
    assert variants["onnx_int8_minmax"].calibration == "minmax"
    assert variants["onnx_int8_qat"].kind == "qat"
    assert variants["pruned_onnx_int8_minmax"].pruned
    assert variants["torch_fp32"].kind == "weights" and not variants["torch_fp32"].pruned


def test_onnx_matches_torch_and_int8_agrees(quantized: dict) -> None:
    bundle = load_bundle(quantized["out"])
    report = json.loads((bundle.path / "quantization.json").read_text())
    for agreement in report["trials"]["onnx_vs_torch"]["model_fp32.onnx"].values():
        assert agreement["max_abs_seg"] < 1e-3 and agreement["same_class"] == 1.0
    # Random CT values over the plan's clip window, normalised as the runtime does: inside the
    # range the INT8 model was calibrated on (standard-normal noise is not, and saturates).
    plan = bundle.plan
    hu = np.random.default_rng(0).uniform(plan.clip_low, plan.clip_high, (2, 1, *PATCH))
    patches = ((hu - plan.mean) / plan.std).astype(np.float32)
    outputs = {}
    for name in ("onnx_fp32", "onnx_int8_minmax"):
        session = ort.InferenceSession(
            str(bundle.artifact_path(name)), providers=["CPUExecutionProvider"]
        )
        outputs[name] = session.run(["seg_logits", "cls_logits"], {"image": patches})
    seg32, seg8 = outputs["onnx_fp32"][0], outputs["onnx_int8_minmax"][0]
    assert seg8.shape == seg32.shape
    # A two-step model has many near-ties between classes; most voxels must still agree.
    assert np.mean(seg32.argmax(1) == seg8.argmax(1)) > 0.8
    correlation = np.corrcoef(seg32.ravel(), seg8.ravel())[0, 1]
    print(f"fp32 vs int8 seg logits: correlation {correlation:.4f}")
    # 0.994 when this file runs alone, 0.926 inside the whole suite (same seed; the two-step
    # model's weights differ with the state earlier tests leave; not yet pinned down). The
    # accuracy of INT8 on a trained model is measured by `edgepanc quantize` itself.
    assert correlation > 0.9


def assert_refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if "rror" in line]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output


@pytest.mark.parametrize("ratio", ["0", "0.95", "-0.2"])
def test_pruning_ratio_outside_range_is_refused(
    trained: tuple[Path, Path], tmp_path: Path, ratio: str
) -> None:
    data, bundle = trained
    before = fingerprint(bundle)
    result = quantize("--model", bundle, "--data", data, "--out", tmp_path / "o", "--prune", ratio)
    assert_refused(result, "--prune")
    assert fingerprint(bundle) == before and not (tmp_path / "o").exists()


def test_bundle_that_is_not_a_trained_model_is_refused(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, bundle = trained
    fake = tmp_path / "fake"
    shutil.copytree(bundle, fake)
    metadata = json.loads((fake / "model.json").read_text())
    metadata["kind"] = "quantized"
    (fake / "model.json").write_text(json.dumps(metadata))
    before = fingerprint(fake)
    result = quantize("--model", fake, "--data", data, "--out", tmp_path / "o")
    assert_refused(result, "error:", str(fake), "trained model")
    assert fingerprint(fake) == before and not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(
        quantize("--model", empty, "--data", data, "--out", tmp_path / "o"), "model.json"
    )


def test_too_few_calibration_cases_is_refused(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = trained
    result = quantize(
        "--model", bundle, "--data", data, "--out", tmp_path / "o", "--calibration-cases", "7"
    )
    assert_refused(result, "error:", str(data), "only 6 labelled training cases")
    assert_refused(
        quantize(
            "--model", bundle, "--data", data, "--out", tmp_path / "o", "--calibration-cases", "1"
        ),
        "--calibration-cases",
    )
    assert not (tmp_path / "o").exists()


def test_unwritable_or_non_empty_output_is_refused(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, bundle = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = quantize("--model", bundle, "--data", data, "--out", blocker / "bundle")
    assert_refused(result, "error:", "cannot create the output folder")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("user data")
    assert_refused(quantize("--model", bundle, "--data", data, "--out", taken), "not empty")
    assert (taken / "keep.txt").read_text() == "user data"


def test_report_says_whether_qat_beat_ptq_and_what_each_int8_variant_lost() -> None:
    from edgepanc.quantization.report import VariantResult, qat_note, target_notes

    def variant(name: str, ms: float, whole: float, lesion: float, f1: float, ok: bool):
        metrics = {"whole_dsc": whole, "lesion_dsc": lesion, "macro_f1": f1}
        return VariantResult(name, "onnxruntime", "int8", None, 1, 1, 1, ms, metrics, ok)

    reference = variant("torch_fp32", 500.0, 0.78, 0.26, 0.58, True)
    ptq = variant("onnx_int8_percentile", 290.0, 0.785, 0.268, 0.478, False)
    qat = variant("onnx_int8_qat", 227.0, 0.788, 0.258, 0.483, False)
    (note,) = qat_note([reference, ptq, qat])
    assert "QAT beat PTQ on whole DSC, macro F1, not on lesion DSC" in note
    assert "0.2580 vs 0.2680" in note
    notes = target_notes([reference, ptq, qat], reference)
    assert "best INT8: no variant within the accuracy tolerance" in notes
    qat_line = next(n for n in notes if "onnx_int8_qat" in n)
    assert "2.20x faster" in qat_line and "macro F1 -0.0970" in qat_line


def test_one_case_named_another_subtype_does_not_fail_a_variant_on_macro_f1() -> None:
    from edgepanc.quantization.config import SUBTYPES_BY_CASE, AccuracyTolerance
    from edgepanc.quantization.report import VariantResult, subtype_flip_notes

    def metrics(whole: float, f1: float, changed: int, cases: int = 36) -> dict:
        named = {f"case_{i:03d}": (i + (1 if i < changed else 0)) % 3 for i in range(cases)}
        return {"whole_dsc": whole, "lesion_dsc": 0.31, "macro_f1": f1, SUBTYPES_BY_CASE: named}

    tolerance = AccuracyTolerance()
    fp32 = metrics(0.900, 0.332, changed=0)
    # 36 cases: one flip cost 0.022 macro F1, within; two flips, or no record per case, not
    assert tolerance.accepts(fp32, metrics(0.900, 0.310, changed=1))
    assert not tolerance.accepts(fp32, metrics(0.900, 0.310, changed=2))
    unrecorded = {k: v for k, v in metrics(0.900, 0.310, 1).items() if k != SUBTYPES_BY_CASE}
    assert not tolerance.accepts(fp32, unrecorded)
    assert tolerance.accepts(fp32, metrics(0.900, 0.315, changed=5))  # lost less than 0.02
    # the flips never excuse a segmentation loss
    assert not tolerance.accepts(fp32, metrics(0.885, 0.332, changed=0))
    # 100 cases: up to three flips
    fp32_100 = metrics(0.9, 0.5, changed=0, cases=100)
    assert tolerance.accepts(fp32_100, metrics(0.9, 0.45, changed=3, cases=100))
    assert not tolerance.accepts(fp32_100, metrics(0.9, 0.45, changed=4, cases=100))
    # the report says why a variant that lost more than 0.02 macro F1 is within
    reference = VariantResult("torch_fp32", "torch", "fp32", None, 1, 1, 1, 200.0, fp32, True)
    flipped = VariantResult(
        "openvino_int8", "openvino", "int8", None, 1, 1, 1, 28.0, metrics(0.9, 0.31, 1), True
    )
    (note,) = subtype_flip_notes([reference, flipped], reference, tolerance.macro_f1)
    assert note.startswith("openvino_int8: macro F1 -0.0220") and "1 of 36 cases" in note


def test_speed_targets_are_judged_on_the_fastest_variant_within_tolerance() -> None:
    from edgepanc.quantization.report import VariantResult, target_variant

    def variant(name: str, ms: float | None, ok: bool) -> VariantResult:
        return VariantResult(name, "onnxruntime", "int8", f"{name}.onnx", 1, 1, 1, ms, {}, ok)

    variants = [
        variant("onnx_int8_minmax", 90.0, True),
        variant("onnx_int8_qat", 80.0, False),  # faster, but lost accuracy
        variant("onnx_int8_entropy", None, True),  # not timed
        variant("pruned_onnx_int8_minmax", 50.0, False),
    ]
    assert target_variant(variants, "onnx_int8").name == "onnx_int8_minmax"
    # nothing within tolerance: the fastest is the candidate, and says so through within_tolerance
    assert target_variant(variants, "pruned_onnx_int8").name == "pruned_onnx_int8_minmax"
    assert target_variant(variants, "tensorrt") is None
    restored = VariantResult.from_dict(variants[0].to_dict())
    assert restored == variants[0]


def test_an_ensemble_is_quantized_member_by_member_into_a_new_ensemble(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    from edgepanc.ensemble import read_ensemble, write_ensemble

    data, bundle = trained
    folds = tmp_path / "folds"
    for name in ("fold_0", "fold_1"):
        shutil.copytree(bundle, folds / name)
    write_ensemble(folds, ["fold_0", "fold_1"])
    before = fingerprint(folds)
    args = ["--data", data, "--int8", "none", "--export", "onnx", "--latency-runs", "1"]
    args += ["--max-validation-cases", "1", "--device", "cpu", "--calibration-cases", "3"]
    out = tmp_path / "q"
    result = quantize("--model", folds, "--out", out, *args)
    assert result.exit_code == 0, result.output
    assert "ensemble" in result.output and "2 members" in result.output
    ensemble = read_ensemble(out)
    assert [m.path.name for m in ensemble.members] == ["fold_0", "fold_1"]
    for member in ensemble.members:
        assert member.kind == "quantized" and (member.path / "quantization.md").is_file()
        # Each member chose its own default: the fastest of its variants within the tolerance
        # (which one that is depends on the timing of this run, so the rule is what is checked).
        artifacts = json.loads((member.path / "model.json").read_text())["artifacts"]
        assert {"torch_fp32", "onnx_fp32"} <= set(artifacts)
        eligible = {
            name: a["latency_ms"]
            for name, a in artifacts.items()
            if a["within_tolerance"] and a["latency_ms"] is not None
        }
        assert member.default_artifact == min(eligible, key=eligible.__getitem__)
    assert ensemble.provenance["quantized_from"] == str(folds)
    assert fingerprint(folds) == before
    # a member that cannot be quantized is found before any work; nothing is left behind
    (folds / "fold_1" / "weights.pt").write_bytes(b"not a torch file")
    failed = quantize("--model", folds, "--out", tmp_path / "q2", *args)
    assert failed.exit_code == 2 and "fold_1" in failed.output
    assert not (tmp_path / "q2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".q2.")]
