"""The restricted unpickler: plain data and numeric arrays in, nothing executed."""

import pickle

import numpy as np
import pytest

from cnnkit.data._safe_pickle import load_data_pickle
from cnnkit.errors import DataError


def _load(tmp_path, raw: bytes):
    path = tmp_path / "f.pkl"
    path.write_bytes(raw)
    return load_data_pickle(path)


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_numeric_arrays_and_builtins_round_trip(tmp_path, protocol):
    value = {"u8": np.arange(12, dtype=np.uint8).reshape(3, 4),
             b"f": np.asfortranarray(np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)),
             "be": np.arange(3, dtype=">i4"), "list": [1, 2.5, "x", None, True],
             "tuple": (b"a", ()), "scalar": np.float64(2.5)}
    out = _load(tmp_path, pickle.dumps(value, protocol=protocol))
    for key in ("u8", b"f", "be"):
        np.testing.assert_array_equal(out[key], value[key])
        assert out[key].dtype == value[key].dtype
    assert out["list"] == value["list"] and out["tuple"] == value["tuple"]
    assert out["scalar"] == 2.5


@pytest.mark.parametrize("payload", [
    np.array([{"a": 1}], dtype=object),                 # object arrays hold arbitrary pickles
    np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]),    # structured dtypes are refused too
])
def test_non_numeric_arrays_are_refused(tmp_path, payload):
    with pytest.raises(DataError, match=r"f.pkl: refusing to load"):
        _load(tmp_path, pickle.dumps({"x": payload}, protocol=2))


def test_globals_are_refused_and_never_called(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w')",))

    with pytest.raises(DataError, match=r"refusing to load the global builtins.exec"):
        _load(tmp_path, pickle.dumps([1, Evil()]))
    assert not marker.exists()


def test_stand_ins_cannot_be_modified_by_a_file(tmp_path):
    # GLOBAL _codecs.encode; EMPTY_DICT; BUILD -> would set attributes on the function.
    with pytest.raises(DataError, match=r"setting state on a global"):
        _load(tmp_path, b"\x80\x02c_codecs\nencode\n}b.")


def test_array_whose_data_does_not_match_its_shape(tmp_path):
    raw = pickle.dumps(np.arange(6, dtype=np.uint8), protocol=2)
    raw = raw.replace(b"K\x06\x85", b"K\x07\x85")  # shape (6,) -> (7,)
    with pytest.raises(DataError, match=r"shape \(7,\) and dtype uint8 with 6 data bytes"):
        _load(tmp_path, raw)


def test_damaged_and_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"not a readable pickle file"):
        _load(tmp_path, pickle.dumps({"a": [1, 2, 3]})[:-5])
    with pytest.raises(DataError, match=r"cannot read .*nope"):
        load_data_pickle(tmp_path / "nope")
