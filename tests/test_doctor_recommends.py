"""``edgepanc doctor`` ends with the commands it recommends here: ``train`` with the recipe the
machine probe picks, ``run`` with the backend it will use (a scripted probe)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgepanc.backends import selection
from edgepanc.cli import main
from edgepanc.recipes.machine import Machine, choose_run_backend, recommended_commands

CASES = [
    # (cuda, cpu flags, backends here) -> (recipe, backend, device)
    (True, {"avx2"}, ["torch", "onnxruntime", "tensorrt"], ("gpu", "tensorrt", "cuda")),
    (True, {"avx2"}, ["torch", "onnxruntime"], ("gpu", "torch", "cuda")),
    (
        False,
        {"avx2", "amx_bf16"},
        ["torch", "onnxruntime", "openvino"],
        ("cpu-bf16", "openvino or onnxruntime", "cpu"),
    ),  # noqa: E501
    (False, {"avx2"}, ["torch", "onnxruntime"], ("cpu-fp32", "onnxruntime", "cpu")),
    (False, {"avx2"}, ["torch"], ("cpu-fp32", "torch", "cpu")),
]


@pytest.mark.parametrize(("cuda", "flags", "backends", "expected"), CASES)
def test_recommended_commands_follow_the_machine(cuda, flags, backends, expected) -> None:
    recipe, backend, device = expected
    commands = recommended_commands(Machine(cuda, frozenset(flags)), backends)
    assert (commands["recipe"], commands["backend"]) == (recipe, backend)
    assert commands["train"] == f"edgepanc train --data DATA --out MODEL --recipe {recipe}"
    assert commands["run"].endswith(f"--device {device}")
    assert choose_run_backend(Machine(cuda, frozenset(flags)), backends)[0] == backend


@pytest.mark.parametrize(("cuda", "flags", "backends", "expected"), CASES)
def test_doctor_ends_with_the_recommended_commands(
    monkeypatch: pytest.MonkeyPatch, cuda, flags, backends, expected
) -> None:
    recipe, backend, _ = expected
    machine = Machine(cuda, frozenset(flags))
    monkeypatch.setattr(Machine, "probe", classmethod(lambda cls: machine))
    monkeypatch.setattr(selection, "available_backends", lambda: list(backends))
    text = CliRunner().invoke(main, ["doctor"])
    assert text.exit_code == 0, text.output
    lines = [line.strip() for line in text.output.splitlines() if line.strip()]
    assert lines[-3:] == [
        f"edgepanc train --data DATA --out MODEL --recipe {recipe}",
        lines[-2],
        lines[-1],
    ]
    assert lines[-2].startswith(f"# backend {backend}:")
    assert lines[-1].startswith("edgepanc run SCANS --model MODEL --out OUT")
    report = json.loads(CliRunner().invoke(main, ["doctor", "--json"]).output)
    assert report["recommended"]["recipe"] == recipe
    assert report["recommended"]["backend"] == backend
