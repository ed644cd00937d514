"""`cnnkit train --processes N` and `mpiexec -n N cnnkit train`: one set of files, clear messages when
MPI is missing, and a job that ends soon, naming the process, when one process is killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cnnkit
import cnnkit.launch
from cnnkit.cli import main

FILES = {"model.safetensors", "checkpoint.safetensors", "metrics.csv", "metrics.jsonl", "report.json"}


def cnnkit_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cnnkit.cli", *arguments]


@pytest.mark.mpi
def test_processes_2_trains_once_and_writes_one_set_of_files(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(cnnkit_command("train", "--processes", "2", "--data", "digits",
                                         "--epochs", "1", "--out", str(out)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test accuracy:") == 1 and done.stdout.count("epoch 1/1") == 1   # rank 0 alone
    assert FILES <= {path.name for path in out.iterdir()}
    assert not list(out.glob(".*.tmp"))
    assert json.loads((out / "report.json").read_text())["history"]["epochs"] == [1]


def test_processes_without_mpiexec_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cnnkit.launch, "find_mpiexec", lambda: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())   # as if mpi4py were there
    assert main(["train", "--processes", "2", "--out", str(tmp_path)]) == 2
    message = capsys.readouterr().err
    assert message.startswith("cnnkit train: --processes 2 needs mpiexec to start the processes, and there "
                              "is none beside ")
    assert 'install it with pip install "cnnkit[mpi]" (the mpich wheel provides it)' in message


def test_processes_without_mpi4py_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert main(["transfer", "--processes", "3", "--mode", "finetune", "--data", "digits", "--weights", "w.safetensors",
                 "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ('cnnkit transfer: --processes 3 needs mpi4py, which is not installed; '
                                       'install it with pip install "cnnkit[mpi]"\n')


def test_processes_that_disagree_with_mpiexec_are_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PMI_SIZE", "2")   # as mpiexec -n 2 sets it
    assert main(["train", "--processes", "3", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("cnnkit train: --processes 3, but mpiexec started 2 processes; give one "
                                       "or the other\n")


def _rank_pid(out: Path, rank: int) -> int | None:
    """The process id of training process ``rank`` writing into ``out`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in command and b"cnnkit.cli" in command and f"PMI_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.mpi
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the processes through /proc")
def test_killing_one_process_ends_the_job_naming_it_and_one_process_resumes(tmp_path):
    out = tmp_path / "run"
    job = subprocess.Popen(cnnkit_command("train", "--processes", "2", "--data", "digits",
                                          "--epochs", "50", "--out", str(out), "--quiet"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.1)
    victim = _rank_pid(out, 1)
    assert checkpoint.exists() and victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = job.communicate(timeout=60)
    assert time.monotonic() - killed < 30
    assert job.returncode != 0
    assert f"cnnkit train: process 1 of 2 (pid {victim}) ended (exit code 9 says mpiexec)" in stderr
    saved = cnnkit.checkpoint.read_safetensors_metadata(checkpoint)
    done = int(saved["epoch"])
    assert done >= 1 and not list(out.glob(".*.tmp"))   # the last checkpoint is whole
    resumed = subprocess.run(cnnkit_command("train", "--data", "digits", "--epochs",
                                            str(done + 1), "--out", str(out), "--resume", "--quiet"),
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "report.json").read_text())["history"]["epochs"] == list(range(1, done + 2))


def test_transfer_refuses_processes_for_a_mode_that_does_not_train(capsys, tmp_path):
    assert main(["transfer", "--processes", "2", "--mode", "features", "--data", "digits", "--weights",
                 "w.safetensors", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("cnnkit transfer: --processes 2: --mode features does not train "
                                       "data-parallel; use --mode finetune or scratch with several processes, "
                                       "or leave --processes out\n")


@pytest.mark.mpi
def test_an_error_in_one_process_ends_the_job(tmp_path):
    # rank 0 alone checks the run folder; the other process must not wait for it for ever
    done = subprocess.run(cnnkit_command("train", "--processes", "2", "--resume", "--out", str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "cnnkit train: --resume: no checkpoint to resume at" in done.stderr


FAILING_FIT = """
import numpy as np, cnnkit
from cnnkit.distributed import MPI
from cnnkit.layers import Dense, Flatten
distributed = MPI()
def transform(image, rng):
    if distributed.rank == 1:
        raise ValueError("a broken image")
    return image
model = cnnkit.Sequential([Flatten(), Dense(2)], input_shape=(2, 2, 1))
model.fit((np.zeros((8, 2, 2, 1), np.float32), np.zeros(8, np.int64)), batch_size=4, transform=transform,
          verbose=0, distributed=distributed)
"""


@pytest.mark.mpi
def test_an_error_in_one_process_of_fit_ends_the_job_naming_it():
    from cnnkit.launch import find_mpiexec
    started = time.monotonic()
    done = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "-c", FAILING_FIT],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and time.monotonic() - started < 30
    assert "process 1 failed: ValueError: a broken image" in done.stderr
