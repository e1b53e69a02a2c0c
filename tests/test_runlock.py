"""The run-directory lock: one run per directory, a second fails at once naming the holder, a
stale lock left by a killed process is taken over with a message."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import smooth_uint8_images, write_face_data

from flowprox.cli.main import main
from flowprox.utils.runlock import LOCK_NAME, RunLock, RunLockedError

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from flowprox.utils.runlock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "faces.npz"
    np.savez(
        path,
        train=smooth_uint8_images(64, 8, 0),
        val=smooth_uint8_images(16, 8, 1),
        test=smooth_uint8_images(16, 8, 2),
    )
    return path


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding the lock of ``tmp_path/run``: yields ``(run, pid)``."""
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        yield run, process.pid
    finally:
        process.kill()
        process.wait()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_second_pretrain_on_a_running_directory_fails_at_once_naming_the_holder(
    npz_path: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "pc"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "flowprox", "pretrain", "--preset", "tiny", "--data",
         str(npz_path), "--out", str(run), "--set", "train.max_steps=1000000",
         "--set", "train.time_limit_minutes=2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / LOCK_NAME).is_file() or not (run / "command.txt").is_file():
            assert first.poll() is None, "the first run ended early"
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        started = time.monotonic()
        code = main(["pretrain", "--preset", "tiny", "--data", str(npz_path), "--out", str(run)])
        err = capsys.readouterr().err
        assert code == 2
        assert time.monotonic() - started < 10  # at once, not after loading data or training
        assert f"pid {first.pid}" in err and socket.gethostname() in err
        assert len((run / "command.txt").read_text().splitlines()) == 1
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize(
    "command",
    [
        ["pretrain", "--preset", "tiny", "--data", "{npz}"],
        ["train", "--task", "denoise", "--prox", "resnet", "--preset", "tiny", "--data", "{npz}"],
        ["reproduce", "--preset", "tiny", "--data", "{data}"],
        ["demo", "--minutes", "0.01"],
        [
            "evaluate",
            "--task",
            "denoise",
            "--preset",
            "tiny",
            "--resolution",
            "8",
            "--data",
            "{npz}",
        ],
        ["restore", "{image}", "--checkpoint", "{missing}"],
    ],  # fmt: skip
    ids=["pretrain", "train", "reproduce", "demo", "evaluate", "restore"],
)
def test_every_command_with_a_run_directory_refuses_a_locked_one(
    command: list[str], holder, npz_path: Path, tmp_path: Path, capsys
) -> None:
    run, pid = holder
    data = write_face_data(tmp_path, test=8, anime=8)
    image = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(smooth_uint8_images(1, 8, 0)[0]).save(image)
    values = {"npz": npz_path, "data": data, "image": image, "missing": tmp_path / "none.pt"}
    argv = [part.format(**values) for part in command] + ["--out", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"pid {pid}" in err and "in use" in err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written beside it


def test_a_directory_inside_a_locked_one_is_refused(holder, npz_path: Path, capsys) -> None:
    run, pid = holder
    code = main(["pretrain", "--preset", "tiny", "--data", str(npz_path), "--out",
                 str(run / "inner")])  # fmt: skip
    assert code == 2
    assert f"pid {pid}" in capsys.readouterr().err
    assert not (run / "inner").exists()


def test_a_stale_lock_of_a_dead_process_is_reported_and_taken_over(
    npz_path: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    stale = {"pid": dead, "host": socket.gethostname(), "command": "flowprox pretrain",
             "started": "2026-01-01T00:00:00"}  # fmt: skip
    (run / LOCK_NAME).write_text(json.dumps(stale))
    code = main(["pretrain", "--preset", "tiny", "--data", str(npz_path), "--out", str(run),
                 "--set", "train.max_steps=4", "--set", "train.eval_every=2"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "stale" in err and f"pid {dead}" in err
    assert (run / "checkpoints" / "best.pt").is_file()
    assert not (run / LOCK_NAME).exists()  # released and removed at the end of the run


def test_the_lock_is_exclusive_reentrant_in_one_process_and_removed_on_release(
    tmp_path: Path, holder
) -> None:
    run, pid = holder
    with pytest.raises(RunLockedError, match=f"pid {pid}"):
        RunLock(run).acquire()
    mine = tmp_path / "mine"
    with RunLock(mine):
        with RunLock(mine):  # the same process may enter its own run directory again
            assert (mine / LOCK_NAME).is_file()
        assert (mine / LOCK_NAME).is_file()
        info = json.loads((mine / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert not mine.exists()  # created by the lock, left empty: removed


def test_a_file_as_the_run_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("keep me")
    with pytest.raises(ValueError, match="not a directory"):
        RunLock(path).acquire()
    assert path.read_text() == "keep me"
