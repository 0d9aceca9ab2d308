"""Recipes: every file parses and resolves, the root copies are the packaged ones, the machine
chooses the train recipe, --set is typed, --print-config prints a recipe, a run's config.json is
a recipe, and the explicit flags win."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepanc.cli import main
from edgepanc.errors import InputError
from edgepanc.quantization.config import QuantizeConfig
from edgepanc.recipes import (
    RECIPE_ROOT,
    read_recipe,
    recipe_names,
    recipe_path,
    recipe_values,
    tomllib,
)
from edgepanc.recipes.settings import parse_set
from edgepanc.thermal import ThermalGuard
from edgepanc.training.recipes import Machine, choose_recipe, resolve_train_config
from edgepanc.training.runner import run_training

from train_support import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
PLAIN = Machine(cuda=False, cpu_flags=frozenset({"avx2", "fma"}))


def train_cli(*args: object) -> object:
    return CliRunner().invoke(main, ["train", *map(str, args)])


@pytest.mark.parametrize("stage", ["train", "quant"])
def test_root_folders_hold_exactly_the_packaged_recipes(stage: str) -> None:
    root = sorted(p.name for p in (REPO / stage).glob("*.toml"))
    packaged = sorted(p.name for p in (RECIPE_ROOT / stage).glob("*.toml"))
    assert root == packaged and len(packaged) >= 3
    for name in packaged:
        assert (REPO / stage / name).read_bytes() == (RECIPE_ROOT / stage / name).read_bytes(), (
            f"{stage}/{name} differs from edgepanc/recipes/{stage}/{name}: copy one over the other"
        )
    assert (REPO / stage / "README.md").is_file()


def test_the_recipes_the_issue_names_exist() -> None:
    assert recipe_names("train") == ["cpu-bf16", "cpu-fp32", "demo", "gpu"]
    assert recipe_names("quant") == ["demo", "int8", "prune-int8"]


@pytest.mark.parametrize("name", recipe_names("train"))
def test_every_train_recipe_parses_resolves_and_says_where_it_is_from(name: str) -> None:
    path = recipe_path("train", name)
    text = path.read_text()
    assert text.startswith("# "), "a recipe opens with a comment: machine, data, measurement"
    assert "measured" in text.lower()
    raw = tomllib.loads(text)
    config = resolve_train_config("data", "run", {}, recipe=name)
    assert config.recipe == name and config.recipe_reason == "--recipe"
    for key, value in raw.items():  # every value reached the configuration, typed
        got = getattr(config, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_the_cpu_recipes_are_the_documented_commands() -> None:
    bf16 = resolve_train_config("d", "r", {}, recipe="cpu-bf16")
    assert (bf16.amp, bf16.epochs, bf16.val_every, bf16.head_refit) == (True, 128, 64, True)
    assert bf16.target_spacing == (2.0, 1.2, 1.2) and bf16.head_statistics == "clean"
    assert (bf16.lesion_fraction, bf16.pancreas_fraction, bf16.teacher_forcing_end) == (0.7, 0.2, 0)
    assert bf16.lesion_size_balance == 1.0
    fp32 = resolve_train_config("d", "r", {}, recipe="cpu-fp32")
    assert (fp32.amp, fp32.epochs, fp32.val_every, fp32.head_refit) == (False, 88, 44, True)
    # the head options alone: the bf16 recipe's sampling lowered lesion DSC in fp32
    assert (fp32.head_statistics, fp32.teacher_forcing_end) == ("clean", 0)
    assert (fp32.lesion_fraction, fp32.lesion_size_balance) != (0.7, 1.0)
    gpu = resolve_train_config("d", "r", {}, recipe="gpu")
    # The GPU recipe's patch and batch are planned for the GPU's memory (tests/test_planning.py:
    # an 8 GB GPU gets at least the measured 64x128x128 batch of two).
    assert gpu.preset == "default" and {"patch_size", "batch_size"} <= set(gpu.planned)
    assert "NOT MEASURED" in recipe_path("train", "gpu").read_text()


@pytest.mark.parametrize("name", recipe_names("quant"))
def test_every_quant_recipe_parses_and_resolves(name: str) -> None:
    values = recipe_values(QuantizeConfig, "quant", name)
    assert values == {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in tomllib.loads(recipe_path("quant", name).read_text()).items()
    }
    config = QuantizeConfig(model="m", data="d", out="o", recipe=name, **values)
    assert config.wants_int8


def test_the_machine_chooses_the_train_recipe() -> None:
    assert choose_recipe(PLAIN)[0] == "cpu-fp32"
    assert "neither avx512_bf16 nor amx_bf16" in choose_recipe(PLAIN)[1]
    for flag in ("avx512_bf16", "amx_bf16"):
        name, reason = choose_recipe(Machine(False, frozenset({"avx2", flag})))
        assert name == "cpu-bf16" and flag in reason
    assert choose_recipe(Machine(True, frozenset()))[0] == "gpu"
    assert choose_recipe(Machine(True, frozenset({"amx_bf16"})), device="cpu")[0] == "cpu-bf16"
    assert choose_recipe(PLAIN, device="cuda")[0] == "gpu"


def test_without_a_recipe_train_prints_and_records_the_machines_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for flags, expected in ((frozenset({"amx_bf16"}), "cpu-bf16"), (frozenset(), "cpu-fp32")):
        machine = Machine(cuda=False, cpu_flags=flags)
        monkeypatch.setattr(Machine, "probe", classmethod(lambda cls, m=machine: m))
        result = train_cli("--data", tmp_path, "--out", tmp_path / "r", "--print-config")
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"# recipe {expected}: no CUDA GPU")
        assert tomllib.loads(result.output)["recipe"] == expected
    assert not (tmp_path / "r").exists()


def test_print_config_is_a_recipe_that_resolves_to_the_same_configuration(tmp_path: Path) -> None:
    result = train_cli(
        "--data", tmp_path, "--out", tmp_path / "r", "--recipe", "cpu-bf16",
        "--set", "epochs=7", "--set", "target_spacing=2.5,1,1", "--print-config",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = tmp_path / "printed.toml"
    printed.write_text(result.output)
    first = resolve_train_config(str(tmp_path), str(tmp_path / "r"), {}, recipe="cpu-bf16")
    again = resolve_train_config(str(tmp_path), str(tmp_path / "r"), {}, recipe=str(printed))
    assert again.epochs == 7 and again.target_spacing == (2.5, 1.0, 1.0)
    assert again.replace(epochs=128, target_spacing=(2.0, 1.2, 1.2)).identity() == first.identity()


def test_precedence_recipe_then_set_then_flags(tmp_path: Path) -> None:
    def printed(*extra: object) -> dict:
        result = train_cli(
            "--data", tmp_path, "--out", tmp_path / "r", "--recipe", "cpu-fp32", *extra,
            "--print-config",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return tomllib.loads(result.output)

    assert printed()["epochs"] == 88
    assert printed("--set", "epochs=7")["epochs"] == 7
    assert printed("--set", "seed=7", "--seed", "5")["seed"] == 5
    values = printed("--set", "head_refit=yes", "--set", "patch_size=64", "--set", "amp=no")
    assert values["head_refit"] is True and values["patch_size"] == [64, 64, 64]
    assert values["amp"] is False
    assert printed("--set", "head_refit=yes", "--no-head-refit")["head_refit"] is False


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("epoch=3", "unknown key 'epoch'"),
        ("epochs=three", "epochs: invalid literal"),
        ("epochs=0", "epochs must be at least 1"),
        ("lr=nan", "lr: expected a finite number"),
        ("head_refit=maybe", "head_refit: expected true or false"),
        ("patch_size=1,2", "patch_size: expected 3 values"),
        ("preset=huge", "preset must be one of"),
        ("epochs", "'epochs' is not key=value"),
    ],
)
def test_a_wrong_set_is_one_line_naming_the_key(
    tmp_path: Path, assignment: str, message: str
) -> None:
    result = train_cli(
        "--data", tmp_path, "--out", tmp_path / "r", "--recipe", "demo", "--set", assignment
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "r").exists()


def test_an_unknown_recipe_or_key_in_a_recipe_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such train recipe.*cpu-bf16, cpu-fp32, demo, gpu"):
        recipe_path("train", "laptop")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 3\nlearning_rate = 0.1\n")
    with pytest.raises(InputError, match="unknown key 'learning_rate'") as info:
        resolve_train_config("d", "r", {}, recipe=str(bad))
    assert info.value.path == bad
    bad.write_text("epochs = [\n")
    with pytest.raises(InputError, match="not a valid recipe"):
        read_recipe(bad)
    assert parse_set(QuantizeConfig, ["export=onnx,int8"]) == {"export": ("onnx", "int8")}


def test_a_finished_runs_config_json_is_a_recipe(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", train_per_subtype=1)
    flags = {"preset": "tiny", "patch_size": (16, 16, 16), "target_spacing": (2.0, 2.0, 2.0)}
    flags |= {"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0, "device": "cpu"}
    config = resolve_train_config(str(data), str(tmp_path / "run"), flags, machine=PLAIN)
    assert config.recipe == "cpu-fp32"
    run_training(config, guard=ThermalGuard([]))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["recipe"] == "cpu-fp32" and "bf16" in saved["recipe_reason"]
    model = json.loads((tmp_path / "run" / "model.json").read_text())
    assert model["provenance"]["training"]["recipe"] == "cpu-fp32"

    again = resolve_train_config(
        str(data), str(tmp_path / "again"), {}, recipe=str(tmp_path / "run" / "config.json")
    )
    assert again.identity() == config.identity()
    assert again.to_dict() | {"out": "", "recipe": ""} == config.to_dict() | {
        "out": "",
        "recipe": "",
        "recipe_reason": "--recipe",
    }
    # --resume without --recipe reads the run's own configuration back.
    resumed = resolve_train_config(str(data), str(tmp_path / "run"), {"resume": True})
    assert resumed.identity() == config.identity() and resumed.recipe.endswith("config.json")


def test_init_from_takes_the_grid_from_the_bundle_not_the_recipe() -> None:
    config = resolve_train_config("d", "r", {"init_from": "bundle"}, recipe="cpu-bf16")
    assert config.target_spacing is None and config.epochs == 128
    pinned = resolve_train_config(
        "d", "r", {"init_from": "b"}, recipe="cpu-bf16", assignments=["target_spacing=3"]
    )
    assert pinned.target_spacing == (3.0, 3.0, 3.0)


def test_quantize_takes_a_recipe_and_its_flags_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgepanc.quantization.pipeline as pipeline

    seen: list[QuantizeConfig] = []

    class Stop(Exception):
        pass

    def fake_run(config: QuantizeConfig) -> None:
        seen.append(config)
        raise Stop

    monkeypatch.setattr(pipeline, "run_quantize", fake_run)
    args = ["quantize", "--model", tmp_path, "--data", tmp_path, "--out", tmp_path / "q"]
    CliRunner().invoke(main, [*map(str, args), "--recipe", "prune-int8", "--finetune-epochs", "3"])
    CliRunner().invoke(main, [*map(str, args), "--recipe", "demo", "--set", "prune=0.2"])
    first, second = seen
    assert (first.prune, first.prune_criterion, first.finetune_epochs) == (0.15, "taylor", 3)
    assert first.recipe == "prune-int8" and first.to_dict()["recipe"] == "prune-int8"
    assert (second.prune, second.calibration_cases, second.max_validation_cases) == (0.2, 4, 6)
    result = CliRunner().invoke(main, [*map(str, args), "--set", "prune=2"])
    assert result.exit_code == 2 and "pruning ratio" in result.output


def test_the_wheel_carries_every_recipe(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("edgepanc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stage in ("train", "quant"):
        for name in recipe_names(stage):
            assert f"edgepanc/recipes/{stage}/{name}.toml" in names


def test_bf16_on_a_cpu_without_it_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from edgepanc.backends import openvino_backend
    from edgepanc.training.loop import warn_if_bf16_is_emulated

    cpu = torch.device("cpu")
    monkeypatch.setattr(openvino_backend, "machine_cpu_flags", lambda: frozenset({"avx2"}))
    assert warn_if_bf16_is_emulated(cpu, torch.bfloat16)
    assert "--no-amp (fp32) trains faster here" in caplog.text
    assert not warn_if_bf16_is_emulated(cpu, None)
    assert not warn_if_bf16_is_emulated(torch.device("cuda"), torch.float16)
    monkeypatch.setattr(openvino_backend, "machine_cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert not warn_if_bf16_is_emulated(cpu, torch.bfloat16)
