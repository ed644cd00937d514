"""Mini-batches from a data set, assembled ahead of time in a background thread.

NumPy releases the GIL in copies, decoding (Pillow) and most transforms, so while the
model computes on batch t the thread can read and augment batch t+1.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from cnnkit.errors import ConfigError, DataError
from cnnkit.data.dataset import ArrayDataset, Dataset
from cnnkit.data.transforms import Transform, apply_transform

_DONE = object()


class _Failed:
    """An exception raised in the producer, carried to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def _stack(dataset: Dataset, idx: np.ndarray, transform: Transform | None,
           rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """The examples ``idx`` as float32 (B, H, W, C) images and int64 (B,) labels."""
    if isinstance(dataset, ArrayDataset) and dataset.transform is None and transform is None:
        return dataset.x[idx].astype(np.float32), dataset.y[idx]
    images, labels = [], np.empty(len(idx), dtype=np.int64)
    for j, i in enumerate(idx):
        img, labels[j] = dataset[int(i)]
        if transform is not None:
            img = apply_transform(transform, img, rng)
        if images and np.shape(img) != np.shape(images[0]):
            raise DataError(f"batches: example {int(i)} has shape {np.shape(img)} but example "
                            f"{int(idx[0])} in the same batch has {np.shape(images[0])}; give "
                            "the data set a fixed size or a resize/crop transform.")
        images.append(img)
    return np.stack(images).astype(np.float32, copy=False), labels


def _produce(dataset, chunks, transform, rng, out: queue.Queue, stop: threading.Event) -> None:
    """Thread body: put each batch (or the error) on ``out`` until done or told to stop."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for idx in chunks:
            if stop.is_set() or not put(_stack(dataset, idx, transform, rng)):
                return
        put(_DONE)
    except BaseException as e:  # noqa: BLE001 - every failure must reach the consumer
        put(_Failed(e))


class Batches:
    """An iterator over (x, y) batches with ``len()`` = the number of batches.

    Created by :func:`batches`; iterate it once (call :func:`batches` again for the next
    epoch). Leaving the loop early, ``close()`` or garbage collection stops the thread.
    """

    def __init__(self, dataset, chunks, transform, rng, prefetch: int, totals: list[int] | None = None):
        self._dataset, self._chunks = dataset, chunks
        #: examples in each batch over all processes (:func:`batches` with ``part``): this one's share
        #: is ``len(y)``; without ``part`` the two are equal
        self.totals = totals if totals is not None else [len(idx) for idx in chunks]
        self._transform, self._rng, self._prefetch = transform, rng, prefetch
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync: Iterator | None = None
        self._finished = False

    def __len__(self) -> int:
        return len(self._chunks)

    def __iter__(self) -> Batches:
        return self

    def _start(self) -> None:
        if self._prefetch == 0:
            self._sync = (_stack(self._dataset, idx, self._transform, self._rng)
                          for idx in self._chunks)
            return
        self._queue = queue.Queue(maxsize=self._prefetch)
        # The thread gets no reference to self, so dropping the iterator collects it.
        self._thread = threading.Thread(
            target=_produce, name="cnnkit-batches", daemon=True,
            args=(self._dataset, self._chunks, self._transform, self._rng, self._queue, self._stop))
        self._thread.start()

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._finished:
            raise StopIteration
        if self._thread is None and self._sync is None:
            self._start()
        if self._sync is not None:
            try:
                return next(self._sync)
            except StopIteration:
                self._finished = True
                raise
        item = self._queue.get()
        if item is _DONE or isinstance(item, _Failed):
            self.close()
            if isinstance(item, _Failed):
                raise item.error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the producer thread and wait for it; further iteration yields nothing."""
        self._finished = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"Invalid value for argument `{name}`: expected an int >= {minimum}; "
                          f"received {name}={value!r}.")
    return int(value)


def batches(dataset: Dataset, batch_size: int, shuffle: bool = False,
            rng: np.random.Generator | int | None = None, drop_last: bool = False,
            transform: Transform | None = None, prefetch: int = 2, part: tuple[int, int] = (0, 1)) -> Batches:
    """Iterate ``dataset`` in batches ``(x, y)``: x float32 (B, H, W, C), y int64 (B,).

    Args:
        dataset: any Dataset; an ArrayDataset without transforms is sliced in one step.
        batch_size: examples per batch; the last batch is smaller unless ``drop_last``.
        shuffle: visit the examples in a random order drawn from ``rng``.
        rng: a ``numpy.random.Generator`` (or an int seed) for the order and for random
            transforms; the same seed gives the same batches. Without one, a fresh
            unseeded generator is used.
        drop_last: skip a final batch smaller than ``batch_size``.
        transform: ``t(img, rng)`` applied to each image, after the dataset's own.
        prefetch: batches prepared ahead in a background thread; 0 loads in the caller.
        part: ``(rank, processes)`` in data-parallel training: every process draws the same
            order and yields only its share of each batch (:func:`share_of`); ``Batches.totals``
            gives each batch's size over all processes. Random transforms draw from a generator
            of the process's own, the same as one process's for rank 0.

    The order is drawn when the function is called; random transforms draw from a
    child generator spawned from ``rng`` at the same time, so results do not depend on
    thread timing nor on other uses of ``rng`` during the epoch. An exception in the
    thread is raised again in the loop that consumes the batches.
    """
    batch_size = _check_int(batch_size, "batch_size", 1)
    prefetch = _check_int(prefetch, "prefetch", 0)
    if transform is not None and not callable(transform):
        raise ConfigError(f"batches: `transform` must be callable; received {transform!r}.")
    if not isinstance(dataset, Dataset):
        raise DataError("batches: `dataset` needs __len__, __getitem__ and classes; received "
                        f"{type(dataset).__name__}. Wrap arrays in ArrayDataset(x, y).")
    if rng is None or isinstance(rng, int | np.integer):
        rng = np.random.default_rng(rng)
    elif not isinstance(rng, np.random.Generator):
        raise ConfigError("Invalid value for argument `rng`: expected a numpy.random.Generator "
                          f"or an int seed; received {type(rng).__name__}.")
    n = len(dataset)
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    chunks = [order[i:i + batch_size] for i in range(0, stop, batch_size)]
    rank, processes = _check_part(part)
    chunks, totals = share_of(chunks, rank, processes)
    # spawn(1)[0] == spawn(p)[0]: one process and rank 0 transform alike
    child = rng.spawn(processes)[rank] if transform is not None else None
    return Batches(dataset, chunks, transform, child, prefetch, totals)


def share_of(chunks: list[np.ndarray], rank: int, processes: int) -> tuple[list[np.ndarray], list[int]]:
    """Process ``rank``'s share of each batch of indices, and each batch's size over all processes.

    A batch of ``B`` examples is cut into ``processes`` consecutive parts whose sizes differ by at
    most one (``numpy.array_split``), so together the processes see each example of the batch
    once. A final batch with fewer examples than processes is dropped: some process would get
    none, and a batch-norm layer or a loss cannot run on an empty batch.
    """
    kept = [idx for idx in chunks if len(idx) >= processes]
    if processes == 1:
        return kept, [len(idx) for idx in kept]
    return [np.array_split(idx, processes)[rank] for idx in kept], [len(idx) for idx in kept]


def _check_part(part) -> tuple[int, int]:
    ok = (isinstance(part, tuple) and len(part) == 2 and all(isinstance(v, int | np.integer) for v in part)
          and part[1] >= 1 and 0 <= part[0] < part[1])
    if not ok:
        raise ConfigError(f"Invalid value for argument `part`: expected (rank, processes) with "
                          f"0 <= rank < processes; received part={part!r}.")
    return int(part[0]), int(part[1])


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``n`` examples."""
    return n // batch_size if drop_last else -(-n // batch_size)
