"""Parallel work on cnnkit's worker pool: :func:`run_parallel`, parts in a fixed order.

The parallel work of the kernels goes through :func:`run_parallel`: blocks of Winograd tiles or
im2col rows, ranges of images, parts of a large matrix product
(:func:`cnnkit.ops.products.matmul`). Each part is compiled code or NumPy that releases the GIL,
and NumPy's BLAS runs one thread per worker meanwhile. How many parts (:func:`num_threads`), the
pool itself and the BLAS rule are the runtime's settings (:mod:`cnnkit.ops.runtime`);
``CNNKIT_NUM_THREADS=1`` runs every part in the calling thread.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from concurrent.futures import wait

from . import runtime
from .runtime import num_threads

__all__ = ["num_threads", "run_parallel"]

_in_worker = threading.local()


def run_parallel(task, parts: int) -> list:
    """``[task(0), ..., task(parts - 1)]``, on the worker pool when ``parts > 1``.

    Each task must touch disjoint output (or its own accumulator). Tasks see the caller's
    runtime settings (:func:`num_threads`). When a task fails, the others are waited for before
    its error is raised, so none writes into the output after the call ended.
    """
    if parts <= 1:
        return [task(0)]
    if getattr(_in_worker, "active", False):   # nested: the pool's threads are busy with the caller
        return [task(part) for part in range(parts)]
    with runtime.computing():
        futures = runtime.submit([functools.partial(contextvars.copy_context().run, _as_worker, task, part)
                                  for part in range(parts)])
        results = []
        for done, future in enumerate(futures):
            try:
                results.append(future.result())
            except BaseException:
                wait(futures[done + 1:])
                raise
        return results


def _as_worker(task, part: int):
    _in_worker.active = True
    try:
        return task(part)
    finally:
        _in_worker.active = False
