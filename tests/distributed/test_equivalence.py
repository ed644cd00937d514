"""Two processes at batch 16 each train exactly as one process at batch 32 (the oracle of
data-parallel training): `mpiexec -n 2` against a plain one-process fit, 20 SGD steps of a small
CNN with batch norm."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnkit.launch import find_mpiexec

pytestmark = pytest.mark.mpi
WORKER = Path(__file__).with_name("_equivalence.py")


def train(out: Path, processes: int, *options: str) -> dict[str, np.ndarray]:
    command = [sys.executable, str(WORKER), str(out), *options]
    if processes > 1:
        command = [find_mpiexec(), "-n", str(processes), *command]
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    with np.load(out) as saved:
        return dict(saved)


def worst_relative_error(reference: dict, other: dict) -> float:
    """Over every tensor: the largest difference, relative to the tensor's largest magnitude."""
    assert reference.keys() == other.keys()
    return max(float(np.max(np.abs(other[k] - reference[k])) / np.max(np.abs(reference[k]))) for k in reference)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return train(tmp_path_factory.mktemp("one") / "weights.npz", 1)


def test_two_processes_at_batch_16_give_the_weights_of_one_at_batch_32(one_process, tmp_path):
    two = train(tmp_path / "weights.npz", 2)
    initial = train(tmp_path / "initial.npz", 1, "--steps=0")
    assert max(np.max(np.abs(one_process[k] - initial[k])) for k in initial) > 0.1   # the steps moved the weights
    assert worst_relative_error(one_process, two) < 1e-5      # parameters and running statistics


def test_without_batch_norm_sync_the_processes_train_another_model(one_process, tmp_path):
    # the control: the oracle can tell two processes whose batch norm sees half the batch
    unsynced = train(tmp_path / "weights.npz", 2, "--no-sync-batch-norm")
    assert worst_relative_error(one_process, unsynced) > 1e-3


def test_two_processes_resume_what_one_process_began_with_its_momentum(tmp_path):
    # one process trains an epoch, two resume it for a second (rank 0's weights, momentum and epoch
    # broadcast): the same as one process training both epochs
    straight = train(tmp_path / "straight.npz", 1, "--epochs=2")
    checkpoint = tmp_path / "checkpoint.safetensors"
    train(tmp_path / "first.npz", 1, "--epochs=1", f"--checkpoint={checkpoint}")
    resumed = train(tmp_path / "resumed.npz", 2, "--epochs=2", f"--resume={checkpoint}")
    assert worst_relative_error(straight, resumed) < 1e-5
