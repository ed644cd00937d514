"""Data-parallel training over MPI, as Horovod and PyTorch's DDP do it.

Every process holds the whole model and trains on its share of each batch; ``fit`` then averages
the gradients over the processes, so each step changes every copy of the model alike. mpi4py is
the transport (over the mpich wheel on one machine, or a cluster's own MPI); cnnkit adds only
what training needs on top of it:

- the start: the model's parameters and buffers, the optimizer's and the schedule's state, the
  epoch and the history are broadcast from rank 0, so a run resumed from rank 0's checkpoint
  continues on any number of processes;
- the gradients, in buckets of about 25 MB (:func:`plan_buckets`): a bucket's allreduce starts,
  non-blocking, as soon as backward has produced its last gradient
  (:class:`GradientBuckets`, called back by the executor's backward after each layer), and every
  bucket is waited for before the optimizer steps. Each process scales its loss gradient by its
  share of the global batch, so the sum over processes is the gradient of the global batch's
  mean loss;
- batch norm with the global batch's statistics (:func:`cnnkit.layers.norm.synchronised_batch_norm`),
  on by default with more than one process;
- sums of metrics, and small flags that rank 0's callbacks decide (stop, failed).

A process that dies cannot answer a collective, and an MPI call waiting for it never returns.
mpich's ``mpiexec`` ends the whole job as soon as one process dies (and ``cnnkit train
--processes`` then names its rank, :mod:`cnnkit.launch`). For launchers that do not, every
wait here polls its request and, twice a second, whether the other processes on this machine
are still alive (their process ids are exchanged at the start); when one has gone, this
process says which and ends the job with ``Abort``. A ``timeout`` covers processes on other
machines.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack, contextmanager

import numpy as np

from .errors import ConfigError
from .launch import INSTALL, launched_processes, write_process_table
from .layers.norm import synchronised_batch_norm
from .ops.runtime import runtime

#: gradient bytes per allreduce (DDP's and Horovod's default size)
BUCKET_BYTES = 25 * 2**20
_PEER_CHECK_SECONDS = 0.5


def import_mpi():
    """mpi4py's ``MPI`` module; a ConfigError saying what to install when it cannot be imported."""
    try:
        from mpi4py import MPI as mpi
    except (ImportError, RuntimeError) as error:   # RuntimeError: mpi4py without an MPI library
        raise ConfigError(f"distributed training needs mpi4py, which cannot be imported ({error}); install "
                          f"it with {INSTALL} (mpi4py, and the mpich wheel that provides mpiexec)") from None
    return mpi


def plan_buckets(entries: list[tuple[int, str]], bucket_bytes: int) -> list[list[int]]:
    """Cut gradients, given in the order backward produces them as ``(bytes, dtype)``, into buckets.

    Consecutive gradients share a bucket until it holds ``bucket_bytes`` or more, so the last one
    may take it past that size (a gradient is never split); a gradient of another dtype starts a
    new bucket (one allreduce sends one type). Returns the positions of each bucket's gradients.
    """
    buckets: list[list[int]] = []
    size, dtype = 0, None
    for position, (nbytes, kind) in enumerate(entries):
        if buckets and (size >= bucket_bytes or kind != dtype):
            buckets.append([])
            size = 0
        if not buckets:
            buckets.append([])
        buckets[-1].append(position)
        size, dtype = size + nbytes, kind
    return buckets


class MPI:
    """Data-parallel training over an MPI communicator: ``fit(..., distributed=MPI())``.

    Start the processes with ``mpiexec -n N python script.py`` (or ``cnnkit train --processes N``);
    ``batch_size`` is then the global batch, cut into ``N`` parts (see the module doc for what is
    synchronised). Only rank 0 prints, runs the callbacks and writes the checkpoint.

    Args:
        comm: an mpi4py communicator (default ``MPI.COMM_WORLD``); cnnkit works on a duplicate.
        bucket_bytes: gradient bytes per allreduce (default 25 MB).
        sync_batch_norm: batch norm with the statistics of the global batch (default True; it
            only acts with more than one process).
        timeout: seconds a wait may last before the job is ended (None: no limit). Processes on
            this machine are watched without it; give one when processes run on several machines.
    """

    def __init__(self, comm=None, bucket_bytes: int = BUCKET_BYTES, sync_batch_norm: bool = True,
                 timeout: float | None = None):
        _check_options(bucket_bytes, sync_batch_norm, timeout)
        self._mpi = import_mpi()
        self.comm = (comm if comm is not None else self._mpi.COMM_WORLD).Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED)
        #: processes on this machine, which share its cores
        self.local_size = node.Get_size()
        node.Free()
        self.bucket_bytes, self.sync_batch_norm, self.timeout = bucket_bytes, sync_batch_norm, timeout
        self._peers = self._neighbours()
        self._failure_noticed = False

    @property
    def is_root(self) -> bool:
        """True on rank 0, the process that prints and writes."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"MPI(rank={self.rank}, size={self.size}, bucket_bytes={self.bucket_bytes})"

    # -- collectives, each waited for under the watch of :meth:`wait` --------------------------
    def wait(self, request) -> None:
        """Wait for a non-blocking MPI request; end the job when a process it waits for has died."""
        started = checked = time.monotonic()
        polls = 0
        while not request.Test():
            now = time.monotonic()
            if now - checked >= _PEER_CHECK_SECONDS or self._failure_noticed:
                self._check_peers()
                checked = now
            if self._failure_noticed:
                self._abort("the launcher reports that a process of the job failed")
            if self.timeout is not None and now - started > self.timeout:
                self._abort(f"no answer from the other processes for {self.timeout:g} s")
            # short waits stay short (the first millisecond or so polls, yielding the GIL to the
            # batch loader); long ones, for a peer still computing, sleep and cost no core
            polls += 1
            time.sleep(0 if polls < 1000 else 1e-3)

    def start_sum(self, array: np.ndarray) -> "_Pending":
        """Start summing ``array`` over the processes; ``.wait()`` returns the sum."""
        out = np.array(array, copy=True, order="C")
        return _Pending(self, self.comm.Iallreduce(self._mpi.IN_PLACE, out, op=self._mpi.SUM), out)

    def sum(self, array: np.ndarray) -> np.ndarray:
        """``array`` summed over the processes (the same on each)."""
        return self.start_sum(array).wait()

    def broadcast(self, value):
        """Rank 0's ``value`` on every process (any picklable value; sent as bytes)."""
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) if self.is_root else b""
        length = np.array([len(data)], np.int64)
        self.wait(self.comm.Ibcast(length, root=0))
        buffer = np.frombuffer(data, np.uint8).copy() if self.is_root else np.empty(int(length[0]), np.uint8)
        self.wait(self.comm.Ibcast(buffer, root=0))
        # our own processes' bytes, never a file's: unpickling them runs nothing foreign
        return value if self.is_root else pickle.loads(buffer.tobytes())

    def decide(self, *flags: bool) -> tuple[bool, ...]:
        """Rank 0's ``flags`` on every process (cheaper than :meth:`broadcast`; once per step)."""
        values = np.array(flags, np.int8)
        self.wait(self.comm.Ibcast(values, root=0))
        return tuple(bool(v) for v in values)

    # -- training --------------------------------------------------------------------------------
    @contextmanager
    def training(self):
        """The block in which ``fit`` trains: this process's share of the cores, and batch norm on
        the global batch's statistics when there is more than one process."""
        with ExitStack() as stack:
            stack.enter_context(self._failure_notices())
            stack.enter_context(runtime(processes=self.local_size, reuse_memory=False))
            if self.sync_batch_norm and self.size > 1:
                stack.enter_context(synchronised_batch_norm(self.sum))
            yield

    def backward(self, propagate, layers, loss: float, dscores, total: int) -> float:
        """Back-propagate this process's ``dscores`` (gradients of its mean ``loss`` over its part of
        a batch of ``total`` examples, one array per output) with ``propagate(on_layer_done)``, the
        executor's backward through ``layers`` (in forward order), and sum the gradients over the
        processes: each parameter's ``grad`` becomes the gradient of the global batch's mean loss.
        Returns the global batch's mean loss."""
        count = len(dscores[0])
        losses = self.start_sum(np.array([loss * count, count], np.float64))
        for part in dscores:
            part *= count / total   # d(global mean)/d(local mean); summed over processes: the global gradient
        buckets = GradientBuckets(self, layers)
        propagate(on_layer_done=buckets.layer_done)
        buckets.finish()
        loss_sum, examples = losses.wait()
        return float(loss_sum / examples)

    # -- failure ---------------------------------------------------------------------------------
    def _neighbours(self) -> dict[int, int]:
        """Rank -> process id of the other processes on this machine (whose life can be checked)."""
        everyone = self.comm.allgather((socket.gethostname(), os.getpid()))
        if self.is_root:   # for cnnkit train --processes, to name a process that mpiexec reports dead
            write_process_table({pid: rank for rank, (_, pid) in enumerate(everyone)})
        here = everyone[self.rank][0]
        return {rank: pid for rank, (host, pid) in enumerate(everyone) if host == here and rank != self.rank}

    @contextmanager
    def _failure_notices(self):
        """While training, mpich's launcher without auto-cleanup (``mpiexec -disable-auto-cleanup``,
        as ``cnnkit train --processes`` starts it) tells the processes that one failed with
        SIGUSR1, whose default ends a process silently; here it names the process and ends the job."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
            yield
            return
        previous = signal.signal(signal.SIGUSR1, self._on_failure_notice)
        try:
            yield
        finally:
            signal.signal(signal.SIGUSR1, previous)

    def _on_failure_notice(self, signum, frame) -> None:
        # noted, not acted on here: the handler may run in the middle of writing the checkpoint;
        # the next wait, between writes, ends the job
        self._failure_noticed = True

    def _check_peers(self) -> None:
        for rank, pid in self._peers.items():
            if not _alive(pid):
                self._abort(f"process {rank} (pid {pid}) has ended")

    def fail(self, error: BaseException) -> None:
        """After ``error`` in this process's training: with other processes, say so and end the job
        (they would wait for this one for ever); alone, return (the caller raises)."""
        if self.size > 1:
            self._abort(f"process {self.rank} failed: {type(error).__name__}: {error}")

    def _abort(self, what: str) -> None:
        print(f"cnnkit: distributed training: {what}; process {self.rank} ends the job of {self.size} "
              f"processes. The last checkpoint is intact: continue with --resume (resume=...), on any "
              f"number of processes", file=sys.stderr, flush=True)
        self.comm.Abort(1)


def end_job(status: int) -> None:
    """In a process that mpiexec started among several, after an error: end every process of the
    job with ``status``, so that none waits for ever on this one. A lone process: nothing."""
    if launched_processes() > 1 and "mpi4py" in sys.modules:
        from mpi4py import MPI as mpi
        if mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            mpi.COMM_WORLD.Abort(status)


class _Pending:
    """A started sum: ``wait()`` returns it."""

    def __init__(self, group: MPI, request, out: np.ndarray):
        self.group, self.request, self.out = group, request, out

    def wait(self) -> np.ndarray:
        self.group.wait(self.request)
        return self.out


class GradientBuckets:
    """The gradients of ``layers`` summed over the processes in buckets, each bucket's allreduce
    started as soon as backward has finished the layers its gradients belong to.

    Pass :meth:`layer_done` to ``run_backward(..., on_layer_done=...)`` and call :meth:`finish`
    after it: the parameters' ``grad`` are then the sums.
    """

    def __init__(self, group: MPI, layers):
        self.group = group
        # backward produces the last layer's gradients first
        entries = [(layer, param) for layer in reversed(layers) for param in layer.parameters().values()
                   if param.trainable]
        plan = plan_buckets([(param.size * param.value.itemsize, param.value.dtype.str) for _, param in entries],
                            group.bucket_bytes)
        self._buckets = [[entries[i][1] for i in positions] for positions in plan]
        # a bucket is complete once the layer of its last gradient (the earliest layer) is done
        self._ready: dict[int, list[int]] = {}
        for index, positions in enumerate(plan):
            self._ready.setdefault(id(entries[positions[-1]][0]), []).append(index)
        self._started: list[tuple[object, np.ndarray, list]] = []

    def layer_done(self, layer) -> None:
        """Called by backward after ``layer``: start the buckets it completes."""
        for request, _, _ in self._started:
            request.Test()   # MPI advances a non-blocking collective only inside MPI calls
        for index in self._ready.pop(id(layer), ()):
            self._start(self._buckets[index])

    def _start(self, params: list) -> None:
        flat = np.concatenate([_grad_or_zeros(param).ravel() for param in params])
        mpi = self.group._mpi
        self._started.append((self.group.comm.Iallreduce(mpi.IN_PLACE, flat, op=mpi.SUM), flat, params))

    def finish(self) -> None:
        """Wait for every bucket and give each parameter its summed gradient."""
        for index in [i for pending in self._ready.values() for i in pending]:
            self._start(self._buckets[index])   # a layer backward never reached (none in fit)
        self._ready.clear()
        for request, flat, params in self._started:
            self.group.wait(request)
            offset = 0
            for param in params:
                param.grad = flat[offset:offset + param.size].reshape(param.shape)
                offset += param.size


def _grad_or_zeros(param) -> np.ndarray:
    """A trainable parameter backward left without a gradient adds nothing, but still takes its
    place in the bucket: every process must send the same layout."""
    return param.grad if param.grad is not None else np.zeros(param.shape, param.value.dtype)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True   # no /proc (macOS): the signal check above is all there is


def _check_options(bucket_bytes, sync_batch_norm, timeout) -> None:
    if not isinstance(bucket_bytes, int) or isinstance(bucket_bytes, bool) or bucket_bytes < 1:
        raise ConfigError(f"MPI: bucket_bytes must be a positive int (bytes per allreduce, default "
                          f"{BUCKET_BYTES}); received bucket_bytes={bucket_bytes!r}")
    if not isinstance(sync_batch_norm, bool):
        raise ConfigError(f"MPI: sync_batch_norm must be True or False; received sync_batch_norm={sync_batch_norm!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise ConfigError(f"MPI: timeout must be a positive number of seconds or None; received timeout={timeout!r}")
