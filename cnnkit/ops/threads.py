"""How cnnkit uses the cores: one worker pool of its own, and NumPy's BLAS held to one thread.

Two pools of threads on the same cores fight: OpenBLAS's helper threads keep spinning for a
while after each multi-threaded product and take the cores from the next parallel step. So
cnnkit's entry points (a forward, a backward, a training step: :func:`uses_worker_pool`) hold
BLAS to one thread, and the parallel work goes through :func:`run_parallel`: blocks of
Winograd tiles or im2col rows, ranges of images, parts of a large matrix product
(:func:`cnnkit.ops.products.matmul`). Each part is compiled code or NumPy that releases the GIL.

``CNNKIT_NUM_THREADS`` sets the pool's size (default: the cores this process may use, divided
among the training processes on this machine inside :func:`sharing_cores`, at least 1);
``CNNKIT_NUM_THREADS=1`` runs every part in the calling thread. ``OPENBLAS_NUM_THREADS``
still sets BLAS's threads outside cnnkit's entry points.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ..errors import ConfigError

ENV_THREADS = "CNNKIT_NUM_THREADS"

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_blas_limiter = None
_in_worker = threading.local()
_sharing = [1]   # processes that share this machine's cores (data-parallel training); see sharing_cores


def num_threads() -> int:
    """Workers in the pool: ``CNNKIT_NUM_THREADS`` if set, else this process's share of the cores
    it may use: ``cores // processes`` on this machine (:func:`sharing_cores`), at least 1."""
    value = os.environ.get(ENV_THREADS)
    if value is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // _sharing[-1])
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"environment variable {ENV_THREADS}={value!r} is not a positive integer; "
                          f"set it to the number of worker threads, e.g. {ENV_THREADS}=2, or unset it")
    return int(value)


@contextmanager
def sharing_cores(processes: int):
    """Inside the block, ``processes`` training processes share this machine's cores, so the pool
    takes ``cores // processes`` of them (no oversubscription); ``CNNKIT_NUM_THREADS`` still wins."""
    _sharing.append(max(1, int(processes)))
    try:
        yield
    finally:
        _sharing.pop()


def run_parallel(task, parts: int) -> list:
    """``[task(0), ..., task(parts - 1)]``, on the worker pool when ``parts > 1``.

    Each task must touch disjoint output (or its own accumulator). BLAS runs one thread per
    worker meanwhile, so the pool and BLAS never oversubscribe the cores.
    """
    if parts <= 1:
        return [task(0)]
    if getattr(_in_worker, "active", False):   # nested: the pool's threads are busy with the caller
        return [task(part) for part in range(parts)]
    with single_threaded_blas():
        return list(_get_pool(parts).map(functools.partial(_as_worker, task), range(parts)))


def _as_worker(task, part: int):
    _in_worker.active = True
    try:
        return task(part)
    finally:
        _in_worker.active = False


@contextmanager
def single_threaded_blas():
    """Hold NumPy's BLAS to one thread inside the block (no-op when threadpoolctl is absent)."""
    limiter = _get_blas_limiter()
    if limiter is None:
        yield
        return
    with limiter.limit(limits=1, user_api="blas"):
        yield


def uses_worker_pool(function):
    """Decorate an entry point (a forward, a training step) to run with BLAS held to one thread.

    Inside, every large product goes through the pool (:func:`cnnkit.ops.products.matmul`);
    a multi-threaded BLAS call would leave OpenBLAS's helper threads spinning on the cores
    that the pool needs next.
    """
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return function(*args, **kwargs)
    return wrapper


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnkit")
        return _pool


def _get_blas_limiter():
    """One ``threadpoolctl.ThreadpoolController`` (its library scan is slow, so it is kept)."""
    global _blas_limiter
    if _blas_limiter is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # the pool still works; BLAS may then oversubscribe
            _blas_limiter = False
        else:
            _blas_limiter = ThreadpoolController()
    return _blas_limiter or None
