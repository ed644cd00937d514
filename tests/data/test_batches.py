"""batches(): sizes, order, determinism, the prefetch thread and its failure modes."""

import gc
import threading
import time

import numpy as np
import pytest

from cnnkit.data import ArrayDataset, RandomCrop, batches, num_batches
from cnnkit.errors import ConfigError, DataError


def _ds(n=23):
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 2), np.float32)
    return ArrayDataset(x, np.arange(n) % 5)


class Counting:
    """A generic Dataset that counts reads and can fail or be slow."""

    classes = ["a"]

    def __init__(self, n, fail_at=None, delay=0.0):
        self.n, self.fail_at, self.delay, self.reads = n, fail_at, delay, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        if i == self.fail_at:
            raise RuntimeError(f"disk error at {i}")
        if self.delay:
            time.sleep(self.delay)
        return np.full((2, 2, 1), i, np.float32), 0


def _batch_threads():
    return [t for t in threading.enumerate() if t.name == "cnnkit-batches" and t.is_alive()]


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("drop_last,sizes", [(False, [10, 10, 3]), (True, [10, 10])])
def test_batch_sizes_dtypes_and_order(prefetch, drop_last, sizes):
    it = batches(_ds(), 10, drop_last=drop_last, prefetch=prefetch)
    assert len(it) == len(sizes) == num_batches(23, 10, drop_last)
    got = list(it)
    assert [len(y) for _, y in got] == sizes
    x, y = got[0]
    assert x.shape == (10, 4, 4, 2) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([x[:, 0, 0, 0] for x, _ in got]),
                                  np.arange(sum(sizes)))


def test_generic_dataset_gives_the_same_batches_as_array_fast_path():
    ds = _ds()
    generic = type("G", (), {"classes": ds.classes, "__len__": lambda s: 23,
                             "__getitem__": lambda s, i: ds[i]})()
    for a, b in zip(batches(ds, 7, shuffle=True, rng=3), batches(generic, 7, shuffle=True, rng=3)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_shuffle_is_a_permutation_reproducible_from_the_seed():
    def order(rng):
        return np.concatenate([x[:, 0, 0, 0] for x, _ in batches(_ds(), 5, shuffle=True, rng=rng)])

    a, b, c = order(np.random.default_rng(0)), order(np.random.default_rng(0)), order(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a), np.arange(23))
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    order(None)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_successive_epochs_from_one_generator_differ_but_replay():
    def two_epochs(seed):
        rng = np.random.default_rng(seed)
        return [np.concatenate([y for _, y in batches(_ds(), 4, shuffle=True, rng=rng)])
                for _ in range(2)]

    first, second = two_epochs(9)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(two_epochs(9)[1], second)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_random_transforms_are_reproducible_whatever_the_prefetch(prefetch):
    x = np.random.default_rng(0).normal(size=(12, 6, 6, 1)).astype(np.float32)
    ds = ArrayDataset(x, np.zeros(12, np.int64))
    crop = RandomCrop(4, padding=1)

    def run(p):
        return np.concatenate([b for b, _ in batches(ds, 5, rng=4, transform=crop, prefetch=p)])

    reference = run(0)
    assert reference.shape == (12, 4, 4, 1)
    np.testing.assert_array_equal(run(prefetch), reference)
    assert not np.array_equal(run(0), np.concatenate(
        [b for b, _ in batches(ds, 5, rng=5, transform=crop, prefetch=0)]))


def test_exception_in_thread_is_raised_in_consumer():
    ds = Counting(20, fail_at=13)
    got = []
    with pytest.raises(RuntimeError, match=r"disk error at 13"):
        for x, _ in batches(ds, 4):
            got.append(x)
    assert len(got) == 3  # batches before the failing one still arrive
    assert not _batch_threads()


def test_prefetch_is_bounded():
    ds = Counting(200)
    it = batches(ds, 2, prefetch=2)
    next(it)
    time.sleep(0.3)
    # consumed 1 batch, 2 wait in the queue and at most 1 more is being built
    assert ds.reads <= 2 * (1 + 2 + 1)
    it.close()


def test_thread_stops_when_consumer_breaks_early():
    ds = Counting(1000, delay=0.001)
    for _ in batches(ds, 2, prefetch=2):
        break
    gc.collect()
    deadline = time.time() + 2
    while _batch_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert not _batch_threads()
    reads = ds.reads
    time.sleep(0.05)
    assert ds.reads == reads < 1000


def test_close_then_iteration_is_over():
    it = batches(_ds(), 5)
    next(it)
    it.close()
    assert list(it) == [] and not _batch_threads()


def test_mismatched_image_shapes_are_reported():
    class Ragged(Counting):
        def __getitem__(self, i):
            return np.zeros((2 + i, 2, 1), np.float32), 0

    with pytest.raises(DataError, match=r"example 1 has shape \(3, 2, 1\) but example 0"):
        list(batches(Ragged(4), 4))


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, r"batch_size=0"),
    ({"batch_size": 2.0}, r"batch_size=2.0"),
    ({"batch_size": 2, "prefetch": -1}, r"prefetch=-1"),
    ({"batch_size": 2, "rng": np.random.RandomState(0)}, r"`rng`.*RandomState"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        batches(_ds(), **kwargs)


def test_plain_arrays_are_not_a_dataset():
    with pytest.raises(DataError, match=r"ArrayDataset\(x, y\)"):
        batches(np.zeros((4, 2, 2, 1)), 2)
