"""The check every attack test makes: a hostile file is refused with a clear error that names it,
before the reader allocates what the file asks for."""

from __future__ import annotations

import tracemalloc

import pytest


def assert_refused(read, path, error: type[Exception], match: str, peak_limit: int = 32 << 20) -> str:
    """``read(path)`` raises ``error`` matching ``match`` and naming ``path``, with a Python heap
    peak (tracemalloc) under ``peak_limit`` bytes on the way; returns the message."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match) as info:
            read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < peak_limit, f"{peak / 2**20:.0f} MiB allocated before refusing"
    return str(info.value)
