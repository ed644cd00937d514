"""``cnnkit.runtime``: process settings set for a block and restored after it, in any thread."""

import ctypes
import platform
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import cnnkit
from cnnkit.callbacks import Callback
from cnnkit.errors import ConfigError
from cnnkit.layers import Conv2d, Dense, Flatten, ReLU
from cnnkit.ops import allocator, runtime as rt
from cnnkit.ops.threads import num_threads, run_parallel
from cnnkit.optim import SGD
from cnnkit.train import train_step

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
glibc_only = pytest.mark.skipif(not GLIBC, reason="malloc's controls are glibc's")


def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _large_array_is_mmapped(nbytes: int = 1 << 30) -> bool:
    """Whether malloc serves a 1 GiB array by mmap (glibc's default above its threshold, at most
    32 MiB) rather than from its heap (while it keeps freed memory): malloc's observable setting.

    The array is far larger than any free region earlier tests can leave in the heap (a 64 MB one
    was sometimes served from freed heap memory after the Keras tests); it is never written, so it
    costs address space only."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    before = libc.mallinfo2().hblkhd
    array = np.empty(nbytes, np.uint8)
    mapped = libc.mallinfo2().hblkhd - before >= nbytes
    del array
    return mapped


def _workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(rt.WORKER_PREFIX)}


def _joined(threads, timeout: float = 10.0) -> bool:
    for thread in threads:
        thread.join(timeout)
    return not any(thread.is_alive() for thread in threads)


@pytest.fixture
def blas_two_threads(monkeypatch):
    """BLAS at two threads, so that holding it to one is observable; a clean start (no pool, no users)."""
    monkeypatch.delenv(rt.ENV_REUSE, raising=False)
    with rt.runtime():   # leaving a block shuts a pool left by earlier calls
        pass
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() and set(_blas_threads()) == {2}
        yield
    assert rt.settings().users == 0


def _model():
    # the Dense product (8 x 4096 x 256) is large enough to be split over the pool
    model = cnnkit.Sequential([Conv2d(16, 3, padding=1), ReLU(), Flatten(), Dense(256), ReLU(), Dense(10)],
                              input_shape=(16, 16, 3), seed=3)
    return model, np.random.default_rng(4).standard_normal((8, 16, 16, 3), dtype=np.float32)


def test_the_block_sets_every_setting_and_restores_it_after(blas_two_threads):
    before = rt.settings()
    assert before.users == 0 and not before.blas_held and not before.keeping_memory and before.pool_workers == 0
    with cnnkit.runtime(threads=3, reuse_memory=True) as inside:
        assert inside == rt.settings()
        assert inside.threads == num_threads() == 3 and inside.users == 1 and inside.blas_held
        assert _blas_threads() == [1] * len(_blas_threads())
        assert inside.keeping_memory == GLIBC
        assert run_parallel(lambda part: part, 3) == [0, 1, 2] and rt.settings().pool_workers == 3
        workers = _workers()   # threads start as work needs them: at most one per part
        assert 1 <= len(workers) <= 3
    assert rt.settings() == before
    assert set(_blas_threads()) == {2}
    assert _joined(workers) and not _workers()


def test_the_settings_are_restored_when_the_block_raises(blas_two_threads):
    before = rt.settings()
    with pytest.raises(KeyError, match="inside"):
        with cnnkit.runtime(threads=2):
            run_parallel(lambda part: part, 2)
            raise KeyError("inside")
    assert rt.settings() == before and set(_blas_threads()) == {2} and not _workers()


@glibc_only
def test_malloc_keeps_large_arrays_in_its_heap_only_inside_the_block(blas_two_threads):
    assert _large_array_is_mmapped()
    with cnnkit.runtime():
        assert not _large_array_is_mmapped()
        with cnnkit.runtime(reuse_memory=False):   # does not ask for it, but the outer block still does
            assert not _large_array_is_mmapped()
    assert _large_array_is_mmapped()
    with pytest.raises(ValueError):
        with cnnkit.runtime():
            raise ValueError
    assert _large_array_is_mmapped() and not rt.settings().keeping_memory


@glibc_only
def test_malloc_is_left_alone_when_the_environment_says_so(blas_two_threads, monkeypatch):
    monkeypatch.setenv(rt.ENV_REUSE, "0")
    with cnnkit.runtime() as inside:
        assert not inside.keeping_memory and _large_array_is_mmapped()


def test_nested_blocks_restore_the_enclosing_block_settings(blas_two_threads):
    with cnnkit.runtime(threads=2):
        with cnnkit.runtime(threads=1, reuse_memory=False) as inner:
            assert inner.threads == 1 and inner.users == 2 and inner.blas_held
            assert inner.keeping_memory == GLIBC   # the outer block asked for it
            with cnnkit.runtime() as innermost:   # threads=None keeps the enclosing block's
                assert innermost.threads == 1
        outer = rt.settings()
        assert outer.threads == 2 and outer.users == 1 and outer.blas_held and outer.keeping_memory == GLIBC
        assert _blas_threads() == [1] * len(_blas_threads())
    assert rt.settings().users == 0 and set(_blas_threads()) == {2}


def test_two_threads_predicting_at_once_get_the_results_of_one_and_leave_the_settings(blas_two_threads):
    model, x = _model()
    inputs = [x, x[::-1].copy()]
    with cnnkit.runtime(threads=2):
        expected = [model.predict(batch) for batch in inputs]
    before = rt.settings()
    meeting = threading.Barrier(2)
    results, errors = {}, []

    def predict(index):
        try:
            with cnnkit.runtime(threads=2):
                meeting.wait(10)
                results[index] = [model.predict(inputs[index]) for _ in range(5)]
                assert rt.settings().pool_workers >= 2   # the product ran on the pool
                meeting.wait(10)   # both inside at once
        except BaseException as error:   # noqa: BLE001 - reported below, in the test's thread
            errors.append(error)

    callers = [threading.Thread(target=predict, args=(index,)) for index in range(2)]
    for caller in callers:
        caller.start()
    assert _joined(callers, 60) and not errors
    for index in range(2):
        for result in results[index]:
            np.testing.assert_array_equal(result, expected[index])   # the split is fixed: bit for bit
    assert rt.settings() == before and set(_blas_threads()) == {2}
    assert _joined(_workers()) and not _workers()


def test_each_thread_keeps_its_own_thread_count(blas_two_threads):
    meeting = threading.Barrier(2)
    seen = {}

    def count(threads):
        with cnnkit.runtime(threads=threads):
            meeting.wait(10)
            seen[threads] = (num_threads(), run_parallel(lambda part: num_threads(), 2))
            meeting.wait(10)

    callers = [threading.Thread(target=count, args=(threads,)) for threads in (1, 3)]
    for caller in callers:
        caller.start()
    assert _joined(callers)
    # the pool's workers see the caller's count too
    assert seen == {1: (1, [1, 1]), 3: (3, [3, 3])}


def test_a_pool_that_is_replaced_is_shut_down(blas_two_threads):
    with cnnkit.runtime():
        run_parallel(lambda part: part, 2)
        first = _workers()
        assert 1 <= len(first) <= 2 and rt.settings().pool_workers == 2
        # held, the old pool is not collected: only shutting it down ends its threads
        old_pool = rt._PROCESS.pool
        assert run_parallel(lambda part: part, 3) == [0, 1, 2]   # needs a larger pool
        assert rt.settings().pool_workers == 3 and rt._PROCESS.pool is not old_pool
        assert _joined(first)   # the old pool's threads ended
        assert 1 <= len(_workers()) <= 3
    assert _joined(_workers()) and not _workers()


def test_work_given_to_a_pool_finishes_when_another_thread_replaces_it(blas_two_threads):
    started, release = threading.Barrier(3), threading.Event()
    result = {}

    def slow(part):
        started.wait(10)
        release.wait(10)
        return part

    with cnnkit.runtime():
        caller = threading.Thread(target=lambda: result.setdefault("slow", run_parallel(slow, 2)))
        caller.start()
        started.wait(10)   # both parts are running on the two-worker pool
        assert run_parallel(lambda part: 10 * part, 3) == [0, 10, 20]   # replaces it meanwhile
        release.set()
        assert _joined([caller])
    assert result == {"slow": [0, 1]}


def test_a_call_outside_any_block_holds_blas_only_while_it_runs(blas_two_threads):
    seen = []
    assert rt.entry_point(lambda: seen.append((rt.settings(), _blas_threads())))() is None
    inside, blas = seen[0]
    assert inside.users == 1 and inside.blas_held and blas == [1] * len(blas) and not inside.keeping_memory
    assert rt.settings().users == 0 and set(_blas_threads()) == {2}


def test_a_training_step_outside_any_block_keeps_memory_only_while_it_runs(blas_two_threads):
    model, x = _model()
    seen = []

    class Recording(SGD):
        def step(self):
            seen.append(rt.settings())
            super().step()

    train_step(model, Recording(lr=0.01, params=model.parameters()), x, np.arange(8))
    assert seen[0].keeping_memory == GLIBC and seen[0].blas_held
    after = rt.settings()
    assert after.users == 0 and not after.keeping_memory and not after.blas_held and set(_blas_threads()) == {2}


def test_the_environment_thread_count_is_honoured(blas_two_threads, monkeypatch):
    monkeypatch.setenv(rt.ENV_THREADS, "1")
    model, x = _model()
    assert num_threads() == 1
    with cnnkit.runtime():
        with cnnkit.runtime(processes=2):
            assert num_threads() == 1
        model.predict(x)
        assert num_threads() == 1 and rt.settings().pool_workers == 0   # every part ran in the caller
        with cnnkit.runtime(threads=2):   # an explicit argument wins over the environment
            assert num_threads() == 2
    monkeypatch.setenv(rt.ENV_THREADS, "3")
    assert num_threads() == 3


def test_fit_runs_in_a_block_and_restores_the_settings_even_when_stopped(blas_two_threads, monkeypatch):
    released = []
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: released.append(True))

    class Interrupt(Callback):
        def on_batch_end(self, epoch, step, logs):
            seen.append(rt.settings())
            raise KeyboardInterrupt

    seen = []
    model, x = _model()
    with pytest.raises(KeyboardInterrupt):
        model.fit((x, np.arange(8)), batch_size=4, verbose=0, callbacks=[Interrupt()])
    assert seen[0].keeping_memory == GLIBC and seen[0].blas_held
    assert released == ([True] if GLIBC else [])
    assert rt.settings().users == 0 and set(_blas_threads()) == {2} and not _workers()


@pytest.mark.parametrize("arguments, message", [
    ({"threads": 0}, "runtime: threads must be a positive integer, or None to keep the default; received threads=0"),
    ({"threads": True}, "received threads=True"),
    ({"threads": 1.5}, "received threads=1.5"),
    ({"processes": -1}, "runtime: processes must be a positive integer, or None to keep the default; "
                        "received processes=-1"),
    ({"reuse_memory": "yes"}, "runtime: reuse_memory must be True or False; received reuse_memory='yes'"),
])
def test_bad_settings_are_refused_before_anything_changes(arguments, message, blas_two_threads):
    with pytest.raises(ConfigError) as error:
        with cnnkit.runtime(**arguments):
            pass
    assert message in str(error.value)
    assert rt.settings().users == 0 and set(_blas_threads()) == {2}


def test_numpy_integers_are_accepted_as_counts(blas_two_threads):
    with cnnkit.runtime(threads=np.int64(2)) as inside:
        assert inside.threads == 2 and type(inside.threads) is int
