"""A pickled data file cannot make the unpickler allocate what its bytes do not hold."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from cnnkit.data._safe_pickle import load_data_pickle
from cnnkit.errors import DataError

from refusal import assert_refused


@pytest.mark.parametrize("data,match", [
    # LONG_BINPUT 2**27: the memo table would grow to 2**27 slots (1 GiB), zero-filled.
    (b"\x80\x02}r" + struct.pack("<I", 2**27) + b".", r"not a readable pickle file \(ValueError: memo index 134217728 at opcode 2"),
    # BINBYTES8 declaring 1 TB with 3 bytes behind it.
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc.", r"not a readable pickle file \(ValueError: expected 1099511627776 bytes"),
], ids=["memo-index", "length"])
def test_declared_sizes_are_refused_before_allocating(tmp_path, data, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(data)
    assert_refused(load_data_pickle, path, DataError, match, peak_limit=16 << 20)


def test_a_plain_batch_still_loads(tmp_path):
    batch = {"labels": [1, 2], "data": np.arange(6, dtype=np.uint8).reshape(2, 3)}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    got = load_data_pickle(path)
    assert got["labels"] == [1, 2] and np.array_equal(got["data"], batch["data"])
