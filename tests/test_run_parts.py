"""Many processes on one folder: ``run DIR --part K/N`` takes a stable share, ``summarize`` rebuilds
the tables from the case JSONs, and the result equals one ``run DIR``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgepanc.runtime.scans import mask_name_for, take_part

from runtime_support import make_tiny_bundle, phantom, run_cli, write_image

TABLES = ("subtype_results.csv", "statistics.csv")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _folder(folder: Path) -> Path:
    for k, name in enumerate(["e", "a", "d", "b", "c"]):
        image = phantom(shape_zyx=(20, 24, 28), with_lesion=k % 2 == 0)
        write_image(image, folder / ("sub" if k > 2 else "") / f"{name}_0000.nii.gz")
    return folder


def test_parts_cover_the_scans_once_in_a_stable_order(tmp_path: Path) -> None:
    scans = [tmp_path / f"{n}_0000.nii.gz" for n in ["e", "a", "d", "b", "c", "f", "g"]]
    parts = [take_part(scans, k, 3) for k in (1, 2, 3)]
    assert sorted(p for part in parts for p in part) == sorted(scans)
    assert [mask_name_for(p) for p in parts[0]] == ["a.nii.gz", "d.nii.gz", "g.nii.gz"]
    assert take_part(list(reversed(scans)), 2, 3) == parts[1]  # discovery order does not matter
    with pytest.raises(ValueError):
        take_part(scans, 4, 3)


def test_three_parts_and_summarize_equal_one_run(tmp_path: Path, bundle: Path) -> None:
    folder = _folder(tmp_path / "in")
    whole = tmp_path / "whole"
    result = run_cli("run", folder, "--model", bundle, "--out", whole, "--no-preview")
    assert result.exit_code == 0, result.stderr
    shared = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "edgepanc", "run", str(folder), "--model", str(bundle)]
    command += ["--out", str(shared), "--no-preview"]
    processes = [  # three processes at once, as three array tasks would run
        subprocess.Popen(
            [*command, "--part", f"{k}/3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for k in (1, 2, 3)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
    computed = [stdout.decode().count(" pancreas ") for stdout, _ in outputs]
    assert computed == [2, 2, 1]  # 5 scans: a d | b e | c
    result = run_cli("summarize", shared)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("5 cases")
    for table in TABLES:
        assert (shared / table).read_bytes() == (whole / table).read_bytes(), table
    assert len((whole / "statistics.csv").read_text().splitlines()) == 6


def test_summarize_refuses_a_table_it_did_not_write(tmp_path: Path, bundle: Path) -> None:
    folder = _folder(tmp_path / "in")
    out = tmp_path / "out"
    assert run_cli("run", folder, "--model", bundle, "--out", out, "--no-preview").exit_code == 0
    (out / "statistics.csv").write_text("my,own,table\n")
    result = run_cli("summarize", out)
    assert result.exit_code == 2 and "statistics.csv" in result.stderr
    assert (out / "statistics.csv").read_text() == "my,own,table\n"
    assert run_cli("summarize", out, "--overwrite").exit_code == 0
    assert (out / "statistics.csv").read_text().startswith("name,pancreas_ml,")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("summarize", empty)
    assert result.exit_code == 2 and "no finished case" in result.stderr


def test_part_must_be_k_of_n(tmp_path: Path, bundle: Path) -> None:
    folder = _folder(tmp_path / "in")
    result = run_cli("run", folder, "--model", bundle, "--out", tmp_path / "o", "--part", "4/3")
    assert result.exit_code == 2 and "--part" in result.stderr
    assert not (tmp_path / "o").exists()
