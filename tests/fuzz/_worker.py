"""Fuzz one file format in this process: mutate a valid file with hypothesis, read each mutant.

Run by ``test_fuzz.py`` as ``python _worker.py <spec.json>``, one process per format, so that
a crash (a signal) or a hang kills only this process and the parent can report it. Each
read must return well-formed arrays (the original ones when the bytes did not change) or
raise a ``CnnkitError``; anything else fails, as does a read slower than the time limit or
one that runs into the memory limit.

Memory limit: ``RLIMIT_AS`` (address space) is set after a warm-up read, to the address
space then in use plus ``memory_mb``. Numba and LLVM reserve a few hundred MB of address
space at import, so a fixed RLIMIT_AS would measure them rather than the reader; measuring
the baseline first leaves exactly ``memory_mb`` for what one read allocates. A read that
hits the limit raises MemoryError somewhere inside; the readers turn it into a WeightsError,
so the worker also fails any error whose cause or context is a MemoryError.

Prints one JSON line of counts on success; prints the failing mutation and exits 1 otherwise.
"""

from __future__ import annotations

import faulthandler
import json
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnkit.errors import CnnkitError

INTERESTING_INTS = [0, 1, -1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1,
                    2**40, 2**63 - 1, -(2**31), -(2**63)]
NUMBER_TEXTS = [b"0", b"-1", b"1", b"3", b"65536", b"20000", b"100000", b"4294967296",
                b"99999999999999999999", b"1e309", b"-0", b"2.5", b"null", b"\"x\""]


class Hang(BaseException):
    """Raised by the alarm: the read took longer than the time limit."""


def _reader(kind: str):
    """The function under test, returning arrays: {name: array} or one image array."""
    if kind == "torch":
        from cnnkit.io import read_torch
        return read_torch
    if kind == "safetensors":
        from cnnkit.io import read_safetensors
        return read_safetensors
    if kind == "h5":
        from cnnkit.io import read_keras_h5
        return read_keras_h5
    if kind == "weights":   # any weights file, routed by its content, Keras 3 layers named
        from cnnkit.io import read_weights
        return read_weights
    if kind == "model":
        from cnnkit.checkpoint import load
        return lambda path: load(path).state_dict()
    if kind == "onnx":   # the initializers and the tensors of Constant nodes
        from cnnkit.io.onnx_file import read_onnx_graph

        def read_onnx(path):
            graph = read_onnx_graph(path)
            tensors = {f"{node.name}.{name}": value for node in graph.nodes
                       for name, value in node.attributes.items() if isinstance(value, np.ndarray)}
            return {**graph.initializers, **tensors}
        return read_onnx
    if kind == "image":
        from cnnkit.data.images import load_image
        return load_image
    raise SystemExit(f"unknown reader {kind!r}")


# ------------------------------------------------------------------------ mutations

position = st.one_of(st.floats(0, 1, exclude_max=True), st.integers(-2048, 2048))
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(0, 7)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(st.just("int"), position, st.sampled_from([1, 2, 4, 8]), st.sampled_from(INTERESTING_INTS),
              st.sampled_from(["little", "big"])),
    st.tuples(st.just("number"), st.integers(0, 10**6), st.sampled_from(NUMBER_TEXTS)),
)


def _index(where, size: int) -> int:
    """A float is a fraction of the file; an int counts from the start (>= 0) or the end."""
    if size == 0:
        return 0
    if isinstance(where, float):
        return min(int(where * size), size - 1)
    return min(where, size - 1) if where >= 0 else max(size + where, 0)


def mutate(data: bytes, steps) -> bytes:
    """Apply the mutation ``steps`` in order: header fields, bytes, lengths."""
    buf = bytearray(data)
    for step in steps:
        kind, at = step[0], step[1]
        if kind == "number":
            runs = list(re.finditer(rb"-?\d+(\.\d+)?", bytes(buf)))
            if runs:
                run = runs[at % len(runs)]
                buf[run.start():run.end()] = step[2]
            continue
        i = _index(at, len(buf))
        if kind == "flip" and buf:
            buf[i] ^= 1 << step[2]
        elif kind == "truncate":
            del buf[i:]
        elif kind == "insert":
            buf[i:i] = step[2]
        elif kind == "delete":
            del buf[i:i + step[2]]
        elif kind == "int":
            width, value, order = step[2], step[3], step[4]
            raw = (value % (1 << (8 * width))).to_bytes(width, order)
            buf[i:i + width] = raw
    return bytes(buf)


# ------------------------------------------------------------------------- checking


def _memory_error_inside(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MemoryError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _check_result(result, expected: dict, unchanged: bool, file_size: int, is_image: bool) -> None:
    """A successful read returns well-formed arrays; the original ones for the original bytes."""
    if is_image:
        assert isinstance(result, np.ndarray) and result.dtype == np.float32, type(result)
        assert result.ndim == 3 and result.shape[2] == 3, result.shape
        assert np.isfinite(result).all() and result.min() >= 0 and result.max() <= 255
        if unchanged:
            assert np.array_equal(result, expected["image"])
        return
    assert isinstance(result, dict), type(result)
    total = 0
    for name, array in result.items():
        assert isinstance(name, str) and isinstance(array, np.ndarray), (name, type(array))
        assert array.dtype.kind in "biufc" and array.dtype.isnative, (name, array.dtype)
        total += array.nbytes
    assert total <= 8 * file_size + (64 << 20), f"{total} bytes of arrays from {file_size} bytes of file"
    if unchanged:
        assert sorted(result) == sorted(expected), (list(result), list(expected))
        for name, array in expected.items():
            assert result[name].dtype == array.dtype and result[name].shape == array.shape, name
            assert result[name].tobytes() == array.tobytes(), name


def _limit_memory(megabytes: int) -> int:
    """Cap the address space at what is in use now plus ``megabytes``; return the cap."""
    status = Path("/proc/self/status").read_text()
    in_use_kb = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1))
    cap = in_use_kb * 1024 + (megabytes << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return cap


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    read = _reader(spec["reader"])
    base = Path(spec["base"]).read_bytes()
    with np.load(spec["expected"]) as npz:
        expected = {name: npz[name] for name in spec["names"]}
    is_image = spec["reader"] == "image"
    work = Path(tempfile.mkdtemp(prefix="cnnkit-fuzz-")) / f"mutant{spec['suffix']}"
    timeout = spec["read_timeout"]

    def on_alarm(signum, frame):
        raise Hang(f"read took more than {timeout} s")

    signal.signal(signal.SIGALRM, on_alarm)
    for companion in spec.get("companions", []):   # files the base file names, e.g. ONNX external data
        shutil.copy(companion, work.parent)
    work.write_bytes(base)
    print(f"mutants are written to {work}", file=sys.stderr)  # kept, to reproduce a hang
    _check_result(read(work), expected, True, len(base), is_image)  # warm-up: imports, caches
    cap = _limit_memory(spec["memory_mb"])
    outcomes: Counter = Counter()
    slowest = [0.0]

    @settings(max_examples=spec["examples"], deadline=None, database=None,
              derandomize=spec["derandomize"], print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(steps=st.lists(mutation, min_size=1, max_size=3))
    def fuzz(steps):
        data = mutate(base, steps)
        work.write_bytes(data)
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        # The alarm cannot interrupt a loop inside C code (libhdf5, zlib): then this
        # watchdog prints where it hangs and ends the process, which the parent reports.
        faulthandler.dump_traceback_later(2 * timeout, exit=True)
        try:
            result = read(work)
        except CnnkitError as error:
            if _memory_error_inside(error):
                raise AssertionError(f"ran into the {spec['memory_mb']} MiB memory limit: {error}") from error
            outcomes[f"refused: {type(error).__name__}"] += 1
            return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
            slowest[0] = max(slowest[0], time.perf_counter() - start)
        _check_result(result, expected, data == base, len(data), is_image)
        outcomes["read"] += 1

    started = time.perf_counter()
    try:
        fuzz()
    except BaseException:  # a Hang, a MemoryError, any non-CnnkitError: report and fail
        traceback.print_exc()
        return 1
    print(json.dumps({"format": spec["format"], "mutations": sum(outcomes.values()),
                      "outcomes": dict(outcomes), "seconds": round(time.perf_counter() - started, 2),
                      "slowest_read_seconds": round(slowest[0], 3),
                      "memory_cap_mib": cap >> 20, "memory_mb": spec["memory_mb"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
