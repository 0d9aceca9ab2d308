"""A runtime-only install: `pip install edgepanc` without extras has no torch.

Each check runs the command line in a fresh interpreter where ``import torch`` fails as it does
in such an install (``sys.modules['torch'] = None``): the runtime commands work end to end on an
ONNX bundle, and the commands that need an extra stop with one line naming it, exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from runtime_support import make_onnx_bundle, make_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
# Runs each argv list through the CLI with torch missing; prints one JSON record per command.
DRIVER = """
import json, sys
sys.modules["torch"] = None  # what `import torch` meets after `pip install edgepanc`
from click.testing import CliRunner
from edgepanc.cli import main
for argv in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, argv)
    print(json.dumps({"argv": argv, "code": result.exit_code, "stdout": result.stdout,
                      "stderr": result.stderr, "torch": sys.modules.get("torch") is not None}))
"""


def without_torch(*commands: list[str]) -> list[dict]:
    """Run ``edgepanc ARGV`` for each of ``commands`` in one interpreter that has no torch."""
    argvs = [[str(a) for a in argv] for argv in commands]
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_synth_run_evaluate_and_doctor_work_without_torch(tmp_path):
    bundle = make_onnx_bundle(tmp_path / "bundle")
    data, out = tmp_path / "data", tmp_path / "out"
    scan = data / "train" / "subtype1" / "quiz_1_001_0000.nii.gz"
    results = without_torch(
        ["synth", "--out", data, "--cases", "2", "--quiet"],
        ["run", scan, "--model", bundle, "--out", out, "--device", "cpu"],
        ["evaluate", "--pred", out, "--gt", data, "--split", "all"],
        ["doctor"],
    )
    assert [r["code"] for r in results] == [0, 0, 0, 0], results
    assert not any(r["torch"] for r in results)
    case = json.loads((out / "quiz_1_001.json").read_text())
    assert (case["backend"], case["artifact"]) == ("onnxruntime", "onnx_fp32")
    assert (out / "quiz_1_001.nii.gz").is_file()
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["n_cases"] == 2  # both references scored, the unrun one as missing
    assert summary["missing_predictions"]["masks"] == ["quiz_2_002.nii.gz"]
    assert 0.0 <= summary["whole_dsc"] <= 1.0
    assert "\ntorch\n  installed  no\n" in results[3]["stdout"]  # doctor says so and goes on


def test_train_and_quantize_name_their_extra_in_one_line(tmp_path, quiz_dataset):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    train, quantize = without_torch(
        ["train", "--data", quiz_dataset, "--out", out / "train"],
        ["quantize", "--model", bundle, "--data", quiz_dataset, "--out", out / "quant"],
    )
    assert train["code"] == 2 and quantize["code"] == 2
    assert train["stderr"] == (
        "error: edgepanc train needs PyTorch: pip install 'edgepanc[train]'\n"
    )
    assert quantize["stderr"] == (
        "error: edgepanc quantize needs PyTorch: pip install 'edgepanc[quant]'\n"
    )
    assert not out.exists()  # stopped before anything was written


def test_a_bundle_with_torch_weights_only_names_the_train_extra(tmp_path):
    from runtime_support import phantom, write_image

    bundle = make_tiny_bundle(tmp_path / "bundle")
    scan = write_image(phantom(), tmp_path / "ct_0000.nii.gz")
    (result,) = without_torch(
        ["run", scan, "--model", bundle, "--out", tmp_path / "out", "--device", "cpu"]
    )
    assert result["code"] == 2, result
    assert result["stderr"].splitlines()[-1] == (
        "error: edgepanc run needs PyTorch: pip install 'edgepanc[train]'"
    )


def test_the_library_declares_torch_as_a_range_in_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(
        d.split(">")[0].split("=")[0].strip() == "torch" for d in project["dependencies"]
    )
    extras = project["optional-dependencies"]
    assert extras["train"] == ["torch>=2.5", "scikit-learn>=1.4"]
    assert "edgepanc[train]" in extras["quant"] and "edgepanc[quant]" in extras["dev"]
    setup = (ROOT / "scripts" / "setup_venv.sh").read_text()
    # the exact CPU build first, then the package: pip then keeps it instead of fetching another
    assert setup.index('"torch==2.13.0"') < setup.index('-e ".[dev]"')
    assert "Apache License" in (ROOT / "LICENSE").read_text()


@pytest.mark.parametrize(
    ("has_venv", "free_mib", "refused"), [(False, 2048, True), (True, 2048, False)]
)
def test_setup_refuses_a_disk_too_full_for_the_environment_in_one_line(
    tmp_path: Path, has_venv: bool, free_mib: int, refused: bool
) -> None:
    # A full disk broke a fresh clone's set-up with an opaque ensurepip error; now it is named.
    # `df` is scripted to report the free space; `python` stands in for a venv that exists.
    work = tmp_path / "clone"
    (work / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup_venv.sh", work / "scripts")
    tools = tmp_path / "bin"
    tools.mkdir()
    df = tools / "df"
    df.write_text(f"#!/bin/sh\necho header\necho 'disk 100 0 {free_mib * 1024} 99% /'\n")
    df.chmod(0o755)
    if has_venv:
        python = work / ".venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text("#!/bin/sh\nexit 0\n")
        python.chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", "source scripts/setup_venv.sh && echo set-up-done"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if refused:
        assert result.returncode == 1
        assert result.stderr.strip().count("\n") == 0
        assert f"{work}: only 2048 MiB free" in result.stderr and "about 3 GiB" in result.stderr
        assert not (work / ".venv").exists()
    else:
        assert result.returncode == 0 and "set-up-done" in result.stdout
