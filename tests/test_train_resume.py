"""Process-level training tests: SIGKILL then --resume replays the losses; 2-process gloo DDP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_support import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
# The console script installed beside this interpreter (torchrun needs a script path).
EDGEPANC = str(Path(sys.executable).parent / "edgepanc")
TRAIN_ARGS = [
    # A subprocess would pick the recipe for this machine; the tests must not depend on it.
    "--recipe",
    "cpu-fp32",
    "--set",
    "preset=tiny",
    "--set",
    "patch_size=16",
    "--set",
    "target_spacing=2",
    "--set",
    "warmup_epochs=0",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--seed",
    "7",
]


def edgepanc_train(data: Path, out: Path, *extra: str) -> list[str]:
    return [EDGEPANC, "train", "--data", str(data), "--out", str(out), *TRAIN_ARGS, *extra]


def losses(run: Path) -> dict[int, tuple[float, float, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # The recipe ends with a head refit, a row of its own without training losses.
    trained = [r for r in records if "phase" not in r]
    return {r["epoch"]: (r["loss"], r["seg_loss"], r["cls_loss"]) for r in trained}


def epochs_done(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("resume") / "data", train_per_subtype=1)


def test_sigkill_mid_run_then_resume_reproduces_the_uninterrupted_losses(
    data: Path, tmp_path: Path
) -> None:
    schedule = ["--set", "epochs=3", "--set", "steps_per_epoch=6", "--set", "val_every=10"]
    reference = tmp_path / "reference"
    subprocess.run(
        edgepanc_train(data, reference, *schedule), check=True, capture_output=True, cwd=REPO
    )

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        edgepanc_train(data, killed, *schedule),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    deadline = time.monotonic() + 300
    while epochs_done(killed) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    completed = epochs_done(killed)
    assert 1 <= completed < 3, "the kill must land after epoch 1 and before the end"

    resumed = subprocess.run(
        edgepanc_train(data, killed, *schedule, "--resume"),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=REPO,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = losses(reference), losses(killed)
    assert sorted(got) == [1, 2, 3]
    for epoch in (2, 3):
        assert got[epoch] == pytest.approx(expected[epoch], rel=1e-5, abs=1e-6)
    assert (killed / "model.json").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_ddp_trains_and_writes_one_bundle(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        EDGEPANC,
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *TRAIN_ARGS,
        "--set",
        "epochs=2",
        "--set",
        "steps_per_epoch=2",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(losses(out)) == [1, 2]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["n_cases"] == 3  # validation cases split over ranks, then gathered
    assert json.loads((out / "model.json").read_text())["kind"] == "trained"
    assert not list(out.glob("*.tmp*"))
