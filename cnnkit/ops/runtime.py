"""The process settings cnnkit computes under, owned in one place: ``with cnnkit.runtime(threads=2):``.

cnnkit changes three things that belong to the whole process, and only through this module:

- **BLAS threads.** NumPy's BLAS is held to one thread while cnnkit computes. Two pools of
  threads on the same cores fight: OpenBLAS's helper threads keep spinning for a while after
  each multi-threaded product and take the cores from cnnkit's next parallel step, so the
  parallel work goes through cnnkit's own worker pool instead (:mod:`cnnkit.ops.threads`).
- **malloc.** Training keeps freed memory in glibc's heap for the next step
  (:mod:`cnnkit.ops.allocator`).
- **The worker pool's threads.**

One more setting belongs to the caller's block, not to the process: ``fold_batch_norm``, whether
inference folds batch norm into the convolution before it (:mod:`cnnkit.executor`), which the
entry points pass on to the executor (:func:`folding_batch_norm`).

A *user* of these settings is a ``with runtime(...)`` block, an entry point (:func:`entry_point`:
a model's forward, backward, predict, a training step) or a parallel map; users nest and may run
in several threads at once. Under one lock the first user to enter holds BLAS and the last to
leave restores it; malloc keeps freed memory while any user asks for it (``reuse_memory``) and
is put back when the last of those leaves. The pool's size is the caller's (a context variable,
so two threads' blocks do not change each other's): the innermost block's ``threads``, else
``CNNKIT_NUM_THREADS``, else this process's share of the cores. One pool serves every thread; a
request for more workers replaces it, and the replaced pool is shut down (the work already given
to it finishes first).

When the last user leaves and a block was among the users, the pool is shut down (its threads
end) and the heap's free memory is given back: leaving the outermost block leaves the process as
it found it. An entry point called outside any block holds and restores BLAS itself (about
20 microseconds, threadpoolctl's; inside a block it costs a lock), a training step puts malloc
back when it ends, and the pool's idle threads stay for the next call (starting threads on every
call would cost more than that).
"""

from __future__ import annotations

import contextvars
import functools
import numbers
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import ConfigError
from . import allocator

ENV_THREADS = "CNNKIT_NUM_THREADS"
#: ``CNNKIT_REUSE_MEMORY=0`` leaves malloc as it is, whatever a block or training step asks.
ENV_REUSE = "CNNKIT_REUSE_MEMORY"
#: The pool's threads are named ``cnnkit-worker_0``, ...
WORKER_PREFIX = "cnnkit-worker"

_threads: contextvars.ContextVar[int | None] = contextvars.ContextVar("cnnkit_threads", default=None)
_processes: contextvars.ContextVar[int] = contextvars.ContextVar("cnnkit_processes", default=1)
_fold_batch_norm: contextvars.ContextVar[bool] = contextvars.ContextVar("cnnkit_fold_batch_norm", default=True)


@dataclass(frozen=True)
class Settings:
    """What is in effect now (see :func:`settings`)."""

    threads: int           # workers the calling thread's parallel work is split over
    users: int             # blocks, entry points and parallel maps running now, in every thread
    blas_held: bool        # NumPy's BLAS held to one thread
    keeping_memory: bool   # malloc keeps freed memory in its heap (glibc)
    pool_workers: int      # the worker pool's size; 0 when there is no pool
    fold_batch_norm: bool  # inference folds batch norm into the convolution before it (the calling thread's)


class _Process:
    """The process-wide side: who uses the settings now, and what was changed for them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.users = 0
        self.memory_users = 0
        self.blocks = 0          # blocks among the users since the last time there were none
        self.blas = None         # threadpoolctl's limiter, while BLAS is held
        self.controller = None   # threadpoolctl's controller (made once: it scans the loaded libraries)
        self.keeping = False
        self.pool: ThreadPoolExecutor | None = None
        self.pool_workers = 0

    def enter(self, memory: bool = False, block: bool = False) -> None:
        with self.lock:
            if self.users == 0:
                self.blas = self._hold_blas()
            self.users += 1
            self.blocks += block
            if memory:
                self.memory_users += 1
                if self.memory_users == 1 and os.environ.get(ENV_REUSE, "1") != "0":
                    self.keeping = allocator.keep_freed_memory()

    def leave(self, memory: bool = False) -> None:
        pool, trim = None, False
        with self.lock:
            self.users -= 1
            if memory:
                self.memory_users -= 1
                if self.memory_users == 0 and self.keeping:
                    allocator.stop_keeping_freed_memory()
                    self.keeping = False
                    # a block ends: give the memory back; a lone training step leaves it to the
                    # next step, which finds it unless something freed in between trims the heap
                    trim = self.blocks > 0
            if self.users == 0:
                if self.blas is not None:
                    with _any_thread_controls_blas():
                        self.blas.restore_original_limits()
                    self.blas = None
                if self.blocks:
                    pool, self.pool, self.pool_workers, self.blocks = self.pool, None, 0, 0
        if trim:
            allocator.release_freed_memory()
        if pool is not None:   # nobody uses it: its threads end at once
            pool.shutdown(wait=not threading.current_thread().name.startswith(WORKER_PREFIX))

    def submit(self, calls: list) -> list[Future]:
        """Give ``calls`` to the pool, replacing it by a larger one if it has fewer workers."""
        with self.lock:   # no one gives work to a pool after it was replaced
            if self.pool_workers < len(calls):
                replaced = self.pool
                self.pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix=WORKER_PREFIX)
                self.pool_workers = len(calls)
                if replaced is not None:
                    replaced.shutdown(wait=False)   # its threads end when its work is done
            return [self.pool.submit(call) for call in calls]

    def _hold_blas(self):
        if self.controller is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:   # the pool still works; BLAS may then oversubscribe the cores
                self.controller = False
            else:
                self.controller = ThreadpoolController()
        if not self.controller:
            return None
        with _any_thread_controls_blas():
            return self.controller.limit(limits=1, user_api="blas")


@contextmanager
def _any_thread_controls_blas():
    """Let this thread set OpenBLAS's threads, and the next one after it.

    threadpoolctl (3.8 here) lets only the first thread that limits a process-wide OpenBLAS pool
    change it until that thread's own limit ends; the other threads' limits silently do nothing.
    Here the first user may hold BLAS in one thread and the last restore it in another, one at a
    time under the runtime's lock, so the control is released before and after each change.
    """
    from threadpoolctl import OpenBLASController
    release = getattr(OpenBLASController, "clear_controlling_thread", None)   # older versions have no such rule
    if release is not None:
        release(force=True)
    try:
        yield
    finally:
        if release is not None:
            release(force=True)


_PROCESS = _Process()


@contextmanager
def runtime(threads: int | None = None, reuse_memory: bool = True, processes: int | None = None,
            fold_batch_norm: bool | None = None):
    """Compute inside the block with these settings; leaving it restores what was there before.

    Args:
        threads: workers in cnnkit's pool for work started in this thread; ``1`` runs
            everything in the calling thread. None keeps the enclosing block's, else
            ``CNNKIT_NUM_THREADS``, else the cores this process may use (divided by
            ``processes``). An explicit number wins over ``CNNKIT_NUM_THREADS``.
        reuse_memory: have malloc keep freed memory for reuse inside the block (glibc; not with
            ``CNNKIT_REUSE_MEMORY=0``): a loop over training steps then allocates its volumes
            in the pages the step before freed. False does not ask for it (another block
            running at the same time still may).
        processes: training processes that share this machine's cores (data-parallel training
            sets it): the pool then takes ``cores // processes`` of them unless ``threads`` or
            ``CNNKIT_NUM_THREADS`` says otherwise. None keeps the enclosing block's, else 1.
        fold_batch_norm: in inference, run a convolution and the batch norm that alone reads its
            output as one convolution with folded weights (then the ReLU after them too); the
            numbers equal the pair's to float32 rounding, not bit for bit. False runs the two
            layers as they are (for bit-for-bit comparisons with another framework's pair).
            None keeps the enclosing block's, else True. Training steps never fold.

    Inside the block NumPy's BLAS runs one thread (the pool does the parallel work). Blocks
    nest and may be open in several threads at once: a setting of the whole process is restored
    when the last block or call using it ends; then the pool's threads end and the heap's free
    memory goes back to the system. Yields the :class:`Settings` in effect.
    """
    _check_count("threads", threads)
    _check_count("processes", processes)
    if not isinstance(reuse_memory, bool):
        raise ConfigError(f"runtime: reuse_memory must be True or False; received reuse_memory={reuse_memory!r}")
    if fold_batch_norm is not None and not isinstance(fold_batch_norm, bool):
        raise ConfigError(f"runtime: fold_batch_norm must be True, False or None (keep the enclosing block's); "
                          f"received fold_batch_norm={fold_batch_norm!r}")
    tokens = [(var, var.set(int(value))) for var, value in ((_threads, threads), (_processes, processes))
              if value is not None]
    if fold_batch_norm is not None:
        tokens.append((_fold_batch_norm, _fold_batch_norm.set(fold_batch_norm)))
    try:
        _PROCESS.enter(memory=reuse_memory, block=True)
        try:
            yield settings()
        finally:
            _PROCESS.leave(memory=reuse_memory)
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def entry_point(function=None, *, reuse_memory: bool = False):
    """Decorate a function that computes with cnnkit's kernels (a forward, a training step) to run
    as a user of the runtime: BLAS held to one thread, and malloc keeping freed memory when
    ``reuse_memory``; inside an open block that costs a lock."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            _PROCESS.enter(memory=reuse_memory)
            try:
                return function(*args, **kwargs)
            finally:
                _PROCESS.leave(memory=reuse_memory)
        return wrapper
    return decorate if function is None else decorate(function)


@contextmanager
def computing():
    """The block form of :func:`entry_point` (for a parallel map)."""
    _PROCESS.enter()
    try:
        yield
    finally:
        _PROCESS.leave()


def submit(calls: list) -> list[Future]:
    """Run each of ``calls`` (functions of no argument) on the worker pool; call inside :func:`computing`."""
    return _PROCESS.submit(calls)


def num_threads() -> int:
    """Workers the calling thread's parallel work is split over: the innermost block's ``threads``,
    else ``CNNKIT_NUM_THREADS``, else the cores this process may use divided by the processes
    sharing them (see :func:`runtime`), at least 1."""
    threads = _threads.get()
    if threads is not None:
        return threads
    value = os.environ.get(ENV_THREADS)
    if value is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // _processes.get())
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"environment variable {ENV_THREADS}={value!r} is not a positive integer; "
                          f"set it to the number of worker threads, e.g. {ENV_THREADS}=2, or unset it")
    return int(value)


def folding_batch_norm() -> bool:
    """Does inference fold batch norm into the convolution before it here (the innermost block's
    ``fold_batch_norm``, else True)?"""
    return _fold_batch_norm.get()


def settings() -> Settings:
    """A snapshot of the settings in effect (the thread count is the calling thread's)."""
    with _PROCESS.lock:
        return Settings(threads=num_threads(), users=_PROCESS.users, blas_held=_PROCESS.blas is not None,
                        keeping_memory=_PROCESS.keeping, pool_workers=_PROCESS.pool_workers,
                        fold_batch_norm=folding_batch_norm())


def _check_count(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ConfigError(f"runtime: {name} must be a positive integer, or None to keep the default; "
                          f"received {name}={value!r}")
