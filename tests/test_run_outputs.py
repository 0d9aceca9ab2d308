"""``edgepanc run`` never loses anything of the user's: inputs, reference masks, files it did not
write, and the work of an interrupted folder run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from edgepanc.io.atomic import atomic_path
from edgepanc.runtime.scans import discover_scans

from runtime_support import make_tiny_bundle, phantom, run_cli, write_image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _scan(path: Path) -> Path:
    return write_image(phantom(shape_zyx=(20, 24, 28)), path)


def _quiz_folder(folder: Path) -> tuple[Path, Path]:
    """``quiz_037_0000.nii.gz`` (the image) beside ``quiz_037.nii.gz`` (its reference mask)."""
    scan = _scan(folder / "quiz_037_0000.nii.gz")
    reference = folder / "quiz_037.nii.gz"
    reference.write_bytes(b"ground truth")
    return scan, reference


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- inputs and reference masks ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["folder", "scan"])
def test_overwrite_never_replaces_a_reference_mask(
    target: str, tmp_path: Path, bundle: Path
) -> None:
    folder = tmp_path / "in"
    scan, reference = _quiz_folder(folder)
    before = _snapshot(folder)
    what = folder if target == "folder" else scan
    result = run_cli("run", what, "--model", bundle, "--out", folder, "--overwrite")
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "quiz_037.nii.gz" in line and "reference mask" in line
    assert _snapshot(folder) == before  # nothing written at all


def test_overwrite_never_replaces_nnunet_labels(tmp_path: Path, bundle: Path) -> None:
    images = tmp_path / "Dataset001" / "imagesTr"
    _scan(images / "pan_001_0000.nii.gz")
    labels = images.with_name("labelsTr")
    labels.mkdir()
    (labels / "pan_001.nii.gz").write_bytes(b"ground truth")
    result = run_cli("run", images, "--model", bundle, "--out", labels, "--overwrite")
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "pan_001.nii.gz" in line and "reference mask" in line
    assert _snapshot(labels) == {"pan_001.nii.gz": b"ground truth"}


def test_the_baseline_keeps_to_the_same_rules(tmp_path: Path, bundle: Path) -> None:
    from edgepanc.errors import InputError
    from edgepanc.runtime.baseline import BaselineConfig, run_baseline

    folder = tmp_path / "in"
    scan, reference = _quiz_folder(folder)
    with pytest.raises(InputError, match="reference mask"):
        run_baseline(scan, bundle, folder, BaselineConfig(overwrite=True))
    assert reference.read_bytes() == b"ground truth"


def test_resolved_paths_not_names_protect_inputs(tmp_path: Path, bundle: Path) -> None:
    folder = tmp_path / "in"
    _scan_path, reference = _quiz_folder(folder)
    alias = tmp_path / "alias"
    alias.symlink_to(folder)  # the same folder under another name
    result = run_cli("run", folder, "--model", bundle, "--out", alias, "--overwrite")
    assert result.exit_code == 2 and "reference mask" in _one_error_line(result.stderr)
    assert reference.read_bytes() == b"ground truth"
    out = tmp_path / "out"
    out.mkdir()
    (out / "quiz_037.nii.gz").symlink_to(reference)  # a link in --out pointing at a reference
    result = run_cli("run", folder, "--model", bundle, "--out", out, "--overwrite")
    assert result.exit_code == 2 and "reference mask" in _one_error_line(result.stderr)
    assert (out / "quiz_037.nii.gz").is_symlink() and reference.read_bytes() == b"ground truth"


# --- files the tool did not write -------------------------------------------------------------


def _refused_beside(
    tmp_path: Path, bundle: Path, name: str, content: bytes
) -> tuple[Path, Path, str]:
    """Run one scan into a folder holding ``name``; the refusal's line, the file left as it was."""
    scan = _scan(tmp_path / "in" / "ok_0000.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--preview")
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert _snapshot(out) == {name: content}  # nothing written, nothing replaced
    return scan, out, line


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("ok.json", b'{"my": "notes"}'),
        ("subtype_results.csv", b"Names,Subtype\nmine.nii.gz,2\n"),
        ("ok_preview.png", b"my picture"),
    ],
)
def test_files_not_written_by_edgepanc_need_overwrite(
    name: str, content: bytes, tmp_path: Path, bundle: Path
) -> None:
    scan, out, line = _refused_beside(tmp_path, bundle, name, content)
    assert name in line and "--overwrite" in line
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--preview", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert (out / name).read_bytes() != content


@pytest.mark.parametrize(
    ("content", "word"),
    [
        (b"Names,Subtype\nok.nii.gz,two\n", "integer"),
        (b"Names,Subtype\n\xff\xfe,1\n", "UTF-8"),
        (b"name;subtype\n", "Names,Subtype"),
    ],
)
def test_bad_subtype_csv_refused_before_any_case(
    content: bytes, word: str, tmp_path: Path, bundle: Path
) -> None:
    _scan_path, _out, line = _refused_beside(tmp_path, bundle, "subtype_results.csv", content)
    assert "subtype_results.csv" in line and word in line


def test_csv_written_by_edgepanc_is_rebuilt_not_refused(tmp_path: Path, bundle: Path) -> None:
    out = tmp_path / "out"
    first = _scan(tmp_path / "a" / "one_0000.nii.gz")
    second = _scan(tmp_path / "b" / "two_0000.nii.gz")
    assert run_cli("run", first, "--model", bundle, "--out", out).exit_code == 0
    result = run_cli("run", second, "--model", bundle, "--out", out)
    assert result.exit_code == 0, result.stderr
    rows = (out / "subtype_results.csv").read_text().splitlines()
    assert rows[0] == "Names,Subtype"
    assert [r.split(",")[0] for r in rows[1:]] == ["one.nii.gz", "two.nii.gz"]


# --- continuing an interrupted folder run -------------------------------------------------------


def _finished_folder_run(tmp_path: Path, bundle: Path) -> tuple[Path, Path]:
    folder = tmp_path / "in"
    for name in ("a", "b", "c"):
        _scan(folder / f"{name}_0000.nii.gz")
    out = tmp_path / "out"
    result = run_cli("run", folder, "--model", bundle, "--out", out)
    assert result.exit_code == 0, result.stderr
    return folder, out


def _summary(stdout: str, key: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(key):
            return line.split()[-1]
    raise AssertionError(f"{key!r} not in {stdout!r}")


def test_rerun_after_a_kill_continues_and_rebuilds_the_csv(tmp_path: Path, bundle: Path) -> None:
    folder, out = _finished_folder_run(tmp_path, bundle)
    record = json.loads((out / "a.json").read_text())
    assert record["status"] == "finished" and record["model_id"] and record["mask_sha256"]
    # What a kill leaves: b's mask with its JSON still saying "writing", c not started, no CSV.
    b_record = json.loads((out / "b.json").read_text())
    (out / "b.json").write_text(json.dumps({**b_record, "status": "writing"}))
    (out / "c.nii.gz").unlink()
    (out / "c.json").unlink()
    (out / "subtype_results.csv").unlink()
    (out / "statistics.csv").unlink()
    kept = (out / "a.nii.gz").stat().st_ino
    redone = (out / "b.nii.gz").stat().st_ino
    result = run_cli("run", folder, "--model", bundle, "--out", out)  # the same command again
    assert result.exit_code == 0, result.stderr
    assert _summary(result.stdout, "skipped") == "1"
    assert (out / "a.nii.gz").stat().st_ino == kept  # finished: not recomputed
    assert (out / "b.nii.gz").stat().st_ino != redone  # mask without a finished JSON: redone
    assert json.loads((out / "b.json").read_text())["status"] == "finished"
    rows = (out / "subtype_results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    statistics = (out / "statistics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in statistics[1:]] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    # everything finished: a third run skips all three and still writes the CSV
    (out / "subtype_results.csv").unlink()
    result = run_cli("run", folder, "--model", bundle, "--out", out)
    assert result.exit_code == 0 and _summary(result.stdout, "skipped") == "3"
    assert len((out / "subtype_results.csv").read_text().splitlines()) == 4


def test_a_mask_edited_after_the_run_is_not_replaced(tmp_path: Path, bundle: Path) -> None:
    folder, out = _finished_folder_run(tmp_path, bundle)
    (out / "b.nii.gz").write_bytes(b"corrected by hand")
    result = run_cli("run", folder, "--model", bundle, "--out", out)
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "b.nii.gz" in line and "--overwrite" in line
    assert (out / "b.nii.gz").read_bytes() == b"corrected by hand"


def test_results_of_another_model_are_not_skipped_or_replaced(tmp_path: Path, bundle: Path) -> None:
    folder, out = _finished_folder_run(tmp_path, bundle)
    record = json.loads((out / "a.json").read_text())
    (out / "a.json").write_text(json.dumps({**record, "model_id": "another-model"}))
    before = _snapshot(out)
    result = run_cli("run", folder, "--model", bundle, "--out", out)
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert "a.nii.gz" in line and "another model" in line and "--overwrite" in line
    assert _snapshot(out) == before
    result = run_cli("run", folder, "--model", bundle, "--out", out, "--overwrite")
    assert result.exit_code == 0 and _summary(result.stdout, "skipped") == "0"


# --- the output folder -------------------------------------------------------------------------


def test_no_output_folder_is_left_after_a_refusal(tmp_path: Path, bundle: Path) -> None:
    scan = _scan(tmp_path / "in" / "ok_0000.nii.gz")
    out = tmp_path / "new" / "out"
    result = run_cli("run", scan, "--model", tmp_path / "no_bundle", "--out", out)
    assert result.exit_code == 2
    assert not (tmp_path / "new").exists()
    bad = tmp_path / "in" / "bad_0000.nii.gz"
    bad.write_text("not an image")
    result = run_cli("run", bad, "--model", bundle, "--out", out)
    assert result.exit_code != 0 and "bad_0000.nii.gz" in _one_error_line(result.stderr)
    assert not (tmp_path / "new").exists()


def _temporary_beside(path: Path) -> Path:
    """A temporary file exactly as :func:`atomic_path` names it, left behind as by a SIGKILL."""
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        os.link(tmp, tmp.with_name(tmp.name + ".keep"))
        raise KeyboardInterrupt
    left = tmp.with_name(tmp.name + ".keep")
    left.rename(tmp)
    return tmp


def test_discovery_skips_hidden_files_and_temporaries(tmp_path: Path) -> None:
    scan = _scan(tmp_path / "ok_0000.nii.gz")
    temporary = _temporary_beside(tmp_path / "other_0000.nii.gz")
    temporary.write_bytes(scan.read_bytes())
    assert temporary.name.startswith(".") and temporary.name.endswith(".nii.gz")
    _scan(tmp_path / ".hidden_0000.nii.gz")
    assert discover_scans(tmp_path) == [scan]


def test_a_run_removes_only_its_own_stale_temporaries(tmp_path: Path, bundle: Path) -> None:
    scan = _scan(tmp_path / "in" / "ok_0000.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    stale = _temporary_beside(out / "ok.nii.gz")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = _temporary_beside(out / "other.json")  # newer than the process: another writer's
    users = out / ".ok.nii.gz.notes"
    users.write_text("mine")
    os.utime(users, (old, old))
    result = run_cli("run", scan, "--model", bundle, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert not stale.exists()
    assert fresh.exists() and users.read_text() == "mine"


def test_a_folder_run_killed_mid_way_continues_where_it_stopped(
    tmp_path: Path, bundle: Path
) -> None:
    """A real SIGKILL once the first case has finished; the same command, run again as a new
    process, skips what finished, computes the rest and removes the killed run's temporaries."""
    import signal
    import subprocess
    import sys

    folder = tmp_path / "in"
    names = [f"case{i:02d}" for i in range(8)]
    for name in names:
        _scan(folder / f"{name}_0000.nii.gz")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "edgepanc", "run", folder, "--model", bundle, "--out", out]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _finished_records(out):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    finished = _finished_records(out)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _summary(rerun.stdout, "skipped") == str(len(finished))
    assert int(_summary(rerun.stdout, "succeeded")) == len(names) - len(finished)
    rows = (out / "subtype_results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [f"{n}.nii.gz" for n in names]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def _finished_records(out: Path) -> list[str]:
    """The visible case JSONs that say finished (a hidden one is a write in flight)."""
    found = []
    for path in out.glob("[!.]*.json"):
        if json.loads(path.read_text())["status"] == "finished":
            found.append(path.name)
    return found


@pytest.mark.parametrize("name", ["ok.nii.gz", "ok.json", "subtype_results.csv"])
def test_an_output_name_taken_by_a_folder_is_refused_up_front(
    name: str, tmp_path: Path, bundle: Path
) -> None:
    scan = _scan(tmp_path / "in" / "ok_0000.nii.gz")
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    result = run_cli("run", scan, "--model", bundle, "--out", out, "--overwrite")
    assert result.exit_code == 2
    line = _one_error_line(result.stderr)
    assert name in line and "folder" in line
    assert [p.name for p in out.iterdir()] == [name]
