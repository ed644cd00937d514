"""Hostile `.pth` files crafted opcode by opcode: each is refused with a WeightsError that
names the file, before the reader allocates what the file cannot justify.

The pickles are written by hand (no torch needed), the way an attacker would write them:
they rebuild a valid tensor and then change it, loop, nest, expand or inflate.
"""

from __future__ import annotations

import pickle
import struct
import zipfile

import numpy as np
import pytest

from cnnkit.errors import WeightsError
from cnnkit.io import _torch_pickle, read_torch

from refusal import assert_refused

FLOATS = np.arange(4, dtype=np.float32)

# ------------------------------------------------------------------ a small pickle assembler


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _dict(**entries: bytes) -> bytes:
    return b"}(" + b"".join(_str(k) + v for k, v in entries.items()) + b"u"


def _storage(numel: int, key: str = "0") -> bytes:
    """A persistent id for storage ``key``, memoised as 0 so it can be fetched again."""
    pid = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"),
                 _int(numel))
    return pid + b"Qq\x00"


def _tensor(storage: bytes, offset: int, shape: tuple, stride: tuple) -> bytes:
    args = _tuple(storage, _int(offset), _tuple(*map(_int, shape)), _tuple(*map(_int, stride)),
                  b"\x89", _global("collections", "OrderedDict") + b")R")
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _valid_tensor() -> bytes:
    return _tensor(_storage(FLOATS.size), 0, (4,), (1,))


def _state_dict(value: bytes) -> bytes:
    """``{'w': value}`` as a whole protocol-2 pickle."""
    return b"\x80\x02}" + _str("w") + value + b"s."


def _zip_file(path, pickled: bytes, storage: bytes = FLOATS.tobytes()):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", storage)
    return path


def _legacy_file(path, pickled: bytes, storage: bytes = FLOATS.tobytes()):
    header = b"".join(pickle.dumps(x, protocol=2) for x in (
        _torch_pickle.LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}))
    keys = pickle.dumps(["0"], protocol=2)
    path.write_bytes(header + pickled + keys + struct.pack("<q", len(storage) // 4) + storage)
    return path


WRITERS = {"zip": _zip_file, "legacy": _legacy_file}


@pytest.fixture(params=sorted(WRITERS))
def write(request, tmp_path):
    """``write(pickled)``: a `.pth` in the zip or the legacy format around that pickle."""
    return lambda pickled, **kw: WRITERS[request.param](tmp_path / "crafted.pth", pickled, **kw)


def _refused(path, match: str, peak_limit: int = 32 << 20) -> str:
    """Read ``path``; require a WeightsError naming it and matching, with a small peak."""
    return assert_refused(read_torch, path, WeightsError, match, peak_limit)


def test_the_crafted_baseline_is_read(write):
    # Guards the tests below: the assembler writes files read_torch accepts.
    got = read_torch(write(_state_dict(_valid_tensor())))
    assert list(got) == ["w"] and np.array_equal(got["w"], FLOATS)


# ------------------------------------------------- BUILD after the tensor was checked


@pytest.mark.parametrize("state", [
    _dict(stride=_tuple(_int(-1)), shape=_tuple(_int(999))),
    _dict(offset=_int(-1)),
    _dict(shape=_tuple(_int(20_000_000))),
    _dict(shape=_tuple(_int(20_000_000)), stride=_tuple(_int(-1)), offset=_int(3)),
], ids=["negative-stride", "offset-minus-1", "huge-shape", "all"])
def test_build_on_a_checked_tensor_is_refused(write, state):
    path = write(_state_dict(_valid_tensor() + state + b"b"))
    _refused(path, r"BUILD")


def test_build_on_a_storage_is_refused(write):
    # Fetch the memoised storage again after the tensor used it, and move its base.
    pickled = b"\x80\x02}" + _str("w") + _valid_tensor() + b"s" + b"h\x00" + _dict(base=_int(-1)) + b"b0."
    _refused(write(pickled), r"BUILD")


def test_build_on_a_stand_in_function_is_refused(write):
    stand_in = _global("torch._utils", "_rebuild_tensor_v2")
    pickled = b"\x80\x02}" + _str("w") + _valid_tensor() + b"s" + stand_in + b"N" + _dict(
        _func=_global("collections", "OrderedDict")) + b"\x86b0."
    _refused(write(pickled), r"BUILD")


@pytest.mark.parametrize("state,match", [
    (_dict(stride=_tuple(_int(-1)), shape=_tuple(_int(999))), "not a non-negative int"),
    (_dict(offset=_int(-1)), "not a non-negative int"),
    (_dict(shape=_tuple(_int(20_000_000))), r"reaches element 19999999 of a storage holding 4"),
    (_dict(shape=_tuple(_int(2), _int(2)), stride=_tuple(_int(1))), "not a non-negative int"),
])
def test_the_final_view_is_checked_even_if_build_got_through(write, state, match, monkeypatch):
    # Defence in depth: with BUILD allowed again, the check after the pickle still holds.
    monkeypatch.delattr(_torch_pickle._Sealed, "__setstate__")
    path = write(_state_dict(_valid_tensor() + state + b"b"))
    _refused(path, match)


def test_a_storage_base_moved_after_the_check_is_caught(write, monkeypatch):
    monkeypatch.delattr(_torch_pickle._Sealed, "__setstate__")
    pickled = b"\x80\x02}" + _str("w") + _valid_tensor() + b"s" + b"h\x00" + _dict(base=_int(-1)) + b"b0."
    _refused(write(pickled), "not a non-negative int")


# ---------------------------------------------------------------------------- hangs


def test_a_state_dict_that_contains_itself_is_refused(write):
    # d = {}; d['state_dict'] = d : a 40-byte pickle that used to loop forever.
    pickled = b"\x80\x02}q\x01" + _str("state_dict") + b"h\x01s."
    _refused(write(pickled), r"contain themselves \(a cycle\)")


def test_a_cycle_below_the_state_dict_is_refused(write):
    # {'w': tensor, 'sub': {'back': <the outer dict>}}
    pickled = (b"\x80\x02}q\x01" + _str("w") + _valid_tensor() + b"s" + _str("sub") + b"}"
               + _str("back") + b"h\x01ss.")
    _refused(write(pickled), r"contains itself \(a cycle\)")


@pytest.mark.parametrize("levels,match", [
    (40, "nests dicts deeper than 32 levels"),
    (20, r"reaches one dict by two paths \(a shared sub-dict\) at key 'a\.a\.")])
def test_shared_sub_dicts_do_not_explode_the_walk(write, levels, match):
    # x = {'w': tensor}; then `levels` times x = {'a': x, 'b': x}: 2**levels paths.
    body = b"}" + _str("w") + _valid_tensor() + b"sq\x02"
    for _ in range(levels):  # POP the last level, keep it in memo 2 for the next
        body += b"0}" + _str("a") + b"h\x02s" + _str("b") + b"h\x02sq\x02"
    path = write(b"\x80\x02" + body + b".")
    _refused(path, match)


def test_deep_nesting_is_refused(write):
    body = _valid_tensor()
    for level in range(40):
        body = b"}" + _str(f"n{level}") + body + b"s"
    _refused(write(b"\x80\x02" + body + b"."), "nests dicts deeper than 32 levels")


# ------------------------------------------------------------ tiny file, huge memory


@pytest.mark.parametrize("shape,stride", [((250_000, 1000), (0, 0)), ((2**40,), (0,)),
                                          ((100_000, 4), (0, 1))])
def test_zero_strides_that_expand_the_data_are_refused(write, shape, stride):
    path = write(_state_dict(_tensor(_storage(4), 0, shape, stride)))
    _refused(path, r"repeats storage elements .* save tensor\.contiguous\(\) instead")


def test_a_small_broadcast_view_is_still_read(write):
    got = read_torch(write(_state_dict(_tensor(_storage(4), 0, (3, 4), (0, 1)))))
    assert np.array_equal(got["w"], np.broadcast_to(FLOATS, (3, 4)))


def test_one_storage_under_too_many_names_is_refused(write):
    # 200 names for one 1 MiB storage: 200 MiB of copies out of a 1 MiB file.
    numel = 1 << 18
    body = b"\x80\x02}(" + _str("w0") + _tensor(_storage(numel), 0, (numel,), (1,)) + b"q\x05"
    body += b"".join(_str(f"w{i}") + b"h\x05" for i in range(1, 200)) + b"u."
    path = write(body, storage=np.zeros(numel, np.float32).tobytes())
    _refused(path, r"more than 8 times the \d+-byte file")


def test_a_storage_larger_than_the_file_is_refused_before_allocating(tmp_path):
    # The central directory and the pickle both claim a 2 GB storage; 16 bytes follow.
    path = _zip_file(tmp_path / "liar.pth", _state_dict(_tensor(_storage(2**29 - 1), 0, (4,), (1,))))
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02", 0, data.rindex(b"archive/data/0") + 1)
    data[central + 20:central + 28] = struct.pack("<II", 2**31 - 4, 2**31 - 4)
    path.write_bytes(bytes(data))
    _refused(path, r"past the end of the \d+-byte file")


def _deflated_zip(path, pickled: bytes, payload_bytes: int):
    """A zip whose storage entry inflates to ``payload_bytes`` zeros from a few bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        zeros = bytes(1 << 20)
        with archive.open(info, "w", force_zip64=True) as entry:
            for _ in range(payload_bytes >> 20):
                entry.write(zeros)
    return path


def test_a_deflate_bomb_storage_is_refused(tmp_path):
    # 256 MiB of zeros in a ~250 KB entry; the pickle reads 16 bytes of it.
    path = _deflated_zip(tmp_path / "bomb.pth", _state_dict(_valid_tensor()), 256 << 20)
    assert path.stat().st_size < 1 << 20
    _refused(path, r"would inflate \d+ bytes to 268435456, more than the 100:1")


def test_a_deflate_bomb_pickle_is_refused(tmp_path):
    # data.pkl itself inflates to 256 MiB: a BINBYTES of zeros inside the pickle.
    path = tmp_path / "bomb.pth"
    size = 256 << 20
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("archive/data.pkl")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as entry:
            entry.write(b"\x80\x02B" + struct.pack("<I", size - 8))
            compressor_chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                entry.write(compressor_chunk)
    _refused(path, r"data\.pkl would inflate")


def test_other_compression_methods_are_refused(tmp_path):
    path = tmp_path / "lzma.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as archive:
        archive.writestr("archive/data.pkl", _state_dict(_valid_tensor()))
        archive.writestr("archive/data/0", FLOATS.tobytes())
    _refused(path, "compression method 14; cnnkit reads stored or DEFLATE entries only")


def test_an_honest_deflated_file_is_still_read(tmp_path):
    payload = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)
    path = tmp_path / "honest.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl",
                         _state_dict(_tensor(_storage(payload.size), 0, (256, 256), (256, 1))))
        archive.writestr("archive/data/0", payload.tobytes())
    assert np.array_equal(read_torch(path)["w"], payload.reshape(256, 256))


def test_memory_error_becomes_a_weights_error_naming_the_file(write, monkeypatch):
    from cnnkit.io import torch_reader

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(torch_reader, "materialize_all", no_memory)
    path = write(_state_dict(_valid_tensor()))
    with pytest.raises(WeightsError, match=r"crafted\.pth: not enough memory to read it"):
        read_torch(path)


@pytest.mark.parametrize("pickled,match", [
    # BINBYTES8 declaring 1 TB: the C unpickler sizes the bytes object before reading it.
    (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc", "does not parse"),
    # LONG_BINPUT 2**31 - 1: the unpickler grows its memo table to that index.
    (b"\x80\x02}r" + struct.pack("<I", 2**31 - 1) + b".", r"memo index 2147483647 at opcode 2"),
], ids=["length", "memo-index"])
def test_pickle_lengths_and_memo_indices_cannot_allocate(write, pickled, match):
    _refused(write(pickled), match)


def test_the_cli_refuses_the_segfaulting_file_with_one_line(write, tmp_path, capsys):
    # The file that killed `cnnkit classify` with SIGSEGV: stride -1 and a huge shape set by BUILD.
    from cnnkit import cli

    state = _dict(shape=_tuple(_int(20_000_000)), stride=_tuple(_int(-1)), offset=_int(3))
    path = write(_state_dict(_valid_tensor() + state + b"b"))
    code = cli.main(["classify", "--arch", "vgg16", "--weights", str(path), str(tmp_path / "cat.jpg")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cnnkit classify: ") and str(path) in err and "BUILD" in err
    assert "Traceback" not in err
