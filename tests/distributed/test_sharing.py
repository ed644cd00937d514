"""The pieces of data-parallel training that need no MPI: the shares of each batch, the gradient
buckets and when they start, and batch norm on statistics summed over (simulated) processes."""

import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from cnnkit.data import ArrayDataset, batches
from cnnkit.data.batches import share_of
from cnnkit.distributed import MPI, GradientBuckets, plan_buckets
from cnnkit.launch import launched_processes
from cnnkit.errors import ConfigError
from cnnkit.layers import BatchNorm2d, Conv2d, Dense, Flatten, ReLU
from cnnkit.executor import run_backward
from cnnkit.layers.norm import synchronised_batch_norm
from cnnkit.model import Sequential


# -- the shares of each batch ------------------------------------------------------------------
@pytest.mark.parametrize("n, batch_size, processes", [(100, 32, 2), (100, 32, 3), (7, 4, 4), (33, 33, 2)])
def test_the_processes_see_every_example_of_each_batch_once(n, batch_size, processes):
    order = np.random.default_rng(0).permutation(n)
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    shares = [share_of(chunks, rank, processes) for rank in range(processes)]
    totals = shares[0][1]
    assert all(share[1] == totals for share in shares)            # every process knows each batch's size
    kept = [chunk for chunk in chunks if len(chunk) >= processes]
    for step, chunk in enumerate(kept):
        parts = [share[0][step] for share in shares]
        np.testing.assert_array_equal(np.concatenate(parts), chunk)   # in order, each once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert totals[step] == len(chunk)


def test_a_final_batch_smaller_than_the_processes_is_dropped():
    chunks = [np.arange(0, 4), np.arange(4, 5)]
    local, totals = share_of(chunks, 1, 2)
    assert totals == [4] and [list(c) for c in local] == [[2, 3]]


def test_one_process_keeps_every_batch():
    chunks = [np.arange(0, 4), np.arange(4, 5)]
    local, totals = share_of(chunks, 0, 1)
    assert totals == [4, 1] and [list(c) for c in local] == [[0, 1, 2, 3], [4]]


def test_every_process_draws_the_same_permutation_and_takes_its_share():
    x = np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1)
    data = ArrayDataset(x, np.zeros(20, np.int64))
    whole = [b[0].ravel() for b in batches(data, 8, shuffle=True, rng=np.random.default_rng([3, 1]))]
    parts = [[b[0].ravel() for b in batches(data, 8, shuffle=True, rng=np.random.default_rng([3, 1]),
                                            part=(rank, 2))] for rank in range(2)]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), batch)


def test_batches_refuses_a_part_that_is_not_a_rank_of_processes():
    data = ArrayDataset(np.zeros((4, 1, 1, 1), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ConfigError, match=r"expected \(rank, processes\) with 0 <= rank < processes; "
                                          r"received part=\(2, 2\)"):
        batches(data, 2, part=(2, 2))


def test_the_launcher_is_read_from_the_environment_without_mpi4py():
    assert launched_processes({}) == 1
    assert launched_processes({"PMI_SIZE": "4"}) == 4                 # mpich's Hydra
    assert launched_processes({"OMPI_COMM_WORLD_SIZE": "3"}) == 3     # Open MPI


# -- gradient buckets --------------------------------------------------------------------------
def test_buckets_close_at_the_size_and_at_a_change_of_dtype():
    entries = [(10, "<f4"), (10, "<f4"), (30, "<f4"), (5, "<f4"), (5, "<f8"), (5, "<f8")]
    assert plan_buckets(entries, 20) == [[0, 1], [2], [3], [4, 5]]
    assert plan_buckets(entries[:4], 1000) == [[0, 1, 2, 3]]
    assert plan_buckets([], 20) == []


class _Recorder:
    """A stand-in for MPI with two processes holding the same gradients: each allreduce doubles
    its bucket, and is recorded with the backward events around it."""

    def __init__(self, events, bucket_bytes):
        self.events, self.bucket_bytes = events, bucket_bytes
        self._mpi = SimpleNamespace(IN_PLACE=None, SUM=None)
        self.comm = SimpleNamespace(Iallreduce=self._iallreduce)

    def _iallreduce(self, _, buffer, op):
        self.events.append(("allreduce", buffer.size))
        buffer *= 2
        return SimpleNamespace(Test=lambda: True)

    def wait(self, request):
        pass


def test_each_bucket_starts_as_soon_as_backward_has_produced_it():
    model = Sequential([Conv2d(4, 3, padding=1), ReLU(), Conv2d(4, 3, padding=1), ReLU(), Flatten(), Dense(3)],
                       input_shape=(5, 5, 2), seed=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 2)).astype(np.float32)
    scores = model.forward(x, training=True)
    grad = np.ones_like(scores)
    model.backward(grad)
    expected = {name: 2 * param.grad for name, param in model.parameters().items()}
    model.zero_grad()
    model.forward(x, training=True)
    events = []
    dense_bytes = sum(p.size * 4 for p in model["dense_1"].parameters().values())
    buckets = GradientBuckets(_Recorder(events, bucket_bytes=dense_bytes), model.layers)

    def done(layer):
        events.append(("done", layer.name))
        buckets.layer_done(layer)
    run_backward(model.plan, model._tape, {model.plan.outputs[0]: grad}, on_layer_done=done)
    buckets.finish()
    conv2 = 4 * 3 * 3 * 4 + 4
    conv1 = 2 * 3 * 3 * 4 + 4
    # dense fills a bucket by itself; the two convolutions share the second (below the size)
    assert events == [("done", "dense_1"), ("allreduce", dense_bytes // 4), ("done", "flatten_1"),
                      ("done", "relu_2"), ("done", "conv2d_2"), ("done", "relu_1"), ("done", "conv2d_1"),
                      ("allreduce", conv2 + conv1)]
    for name, param in model.parameters().items():
        np.testing.assert_array_equal(param.grad, expected[name])


# -- batch norm over simulated processes -------------------------------------------------------
def _summing_across(threads: int):
    """``total(array)`` for ``threads`` threads standing for processes: each gets the sum of all."""
    barrier, slots = threading.Barrier(threads), {}

    def total(array):
        slots[threading.get_ident()] = array
        barrier.wait()
        result = sum(slots[key] for key in sorted(slots))
        barrier.wait()
        return result
    return total


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_synchronised_batch_norm_on_two_halves_is_batch_norm_on_the_whole(dtype, tolerance):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 3, 3, 4)) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    whole = BatchNorm2d()
    whole.build(x.shape[1:])
    y = whole.forward(x, training=True)
    dx = whole.backward(dy)
    total = _summing_across(2)
    halves = [BatchNorm2d() for _ in range(2)]
    results = [None, None]

    def run(rank):
        layer, part = halves[rank], slice(4 * rank, 4 * rank + 4)
        layer.build(x.shape[1:])
        with synchronised_batch_norm(total):
            out = layer.forward(x[part], training=True)
            results[rank] = out, layer.backward(dy[part] * 0.5) * 2   # each process: half the global batch
    workers = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    np.testing.assert_allclose(np.concatenate([r[0] for r in results]), y, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(np.concatenate([r[1] for r in results]), dx, rtol=tolerance, atol=tolerance)
    # parameters, their gradients and the buffers are float32 whatever the input
    for name in ("weight", "bias"):   # the parts of the parameter gradients add up to the whole's
        parts = sum(layer.parameters()[name].grad for layer in halves) * 2
        np.testing.assert_allclose(parts, whole.parameters()[name].grad, rtol=1e-6, atol=1e-6)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(halves[0].buffers()[name], whole.buffers()[name], rtol=1e-6)


# -- without MPI -------------------------------------------------------------------------------
def test_one_process_trains_without_importing_mpi4py():
    code = ("import sys, numpy as np, cnnkit; from cnnkit.layers import Dense, Flatten; "
            "m = cnnkit.Sequential([Flatten(), Dense(2)], input_shape=(2, 2, 1)); "
            "m.fit((np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1])), verbose=0); "
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_mpi4py_mpi_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # import mpi4py now raises ImportError
    with pytest.raises(ConfigError, match=r'distributed training needs mpi4py, which cannot be imported '
                                          r'\(.*\); install it with pip install "cnnkit\[mpi\]"'):
        MPI()


def test_mpi_refuses_bad_options_before_importing_mpi4py():
    with pytest.raises(ConfigError, match="MPI: bucket_bytes must be a positive int .* received bucket_bytes=0"):
        MPI(bucket_bytes=0)
    with pytest.raises(ConfigError, match="MPI: timeout must be a positive number of seconds or None; "
                                          "received timeout=-1"):
        MPI(timeout=-1)


def test_fit_refuses_a_distributed_that_is_not_mpi():
    model = Sequential([Flatten(), Dense(2)], input_shape=(2, 2, 1))
    with pytest.raises(ConfigError, match="fit: distributed must be None or cnnkit.distributed.MPI"):
        model.fit((np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1])), verbose=0, distributed="mpi")


def test_a_process_that_ended_is_seen_as_gone():
    from cnnkit.distributed import _alive
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert _alive(child.pid) or child.poll() is not None
    child.wait()
    assert _alive(os.getpid()) and not _alive(child.pid)


def test_processes_on_one_machine_share_its_cores_unless_the_threads_are_set(monkeypatch):
    from cnnkit import runtime
    from cnnkit.ops.runtime import num_threads
    monkeypatch.delenv("CNNKIT_NUM_THREADS", raising=False)
    cores = num_threads()
    with runtime(processes=2):
        assert num_threads() == max(1, cores // 2)
        with runtime(processes=4 * cores):
            assert num_threads() == 1
    assert num_threads() == cores
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "3")
    with runtime(processes=2):
        assert num_threads() == 3
