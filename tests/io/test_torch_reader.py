"""read_torch on files written by torch itself: both formats, dtypes, views, nesting."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from cnnkit.io import read_torch

# every test here reads files that torch.save wrote
torch = pytest.importorskip("torch", reason="PyTorch, the test-only oracle, is not installed: pip install torch==2.13.0")


def _expected(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # read_torch documents the widening to float32
    return tensor.contiguous().numpy()


def _assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        expected = _expected(tensor)
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        # Compare bit patterns so NaN payloads and -0.0 count too.
        assert got[name].tobytes() == expected.tobytes(), name


def test_vgg16_shaped_state_dict_round_trips(tmp_path, vgg_sd, save_torch, fmt):
    path = save_torch(vgg_sd, tmp_path / "vgg.pth", fmt)
    got = read_torch(path)
    _assert_same(got, vgg_sd)
    assert got["features.0.weight"].shape == (8, 3, 3, 3)
    assert got["features.28.weight"].shape == (64, 64, 3, 3)
    assert got["classifier.6.bias"].shape == (10,)
    assert len(got) == 32


def test_state_dict_of_a_real_module(tmp_path, save_torch, fmt):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    sd = model.state_dict()  # includes the int64 0-d num_batches_tracked
    got = read_torch(save_torch(sd, tmp_path / "m.pt", fmt))
    _assert_same(got, sd)
    assert got["1.num_batches_tracked"].shape == ()


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
          torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
          torch.complex128,
          # No legacy storage class: saved as UntypedStorage + _rebuild_tensor_v3(dtype).
          torch.uint16, torch.uint32, torch.uint64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_dtype_is_bit_exact(tmp_path, save_torch, fmt, dtype):
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(3, 5, generator=gen) * 100
    if dtype == torch.bool:
        tensor = values > 0
    elif dtype.is_complex:
        tensor = torch.complex(values, -values).to(dtype)
    elif dtype in (torch.uint16, torch.uint32, torch.uint64):
        tensor = values.abs().to(torch.int64).to(dtype)
    else:
        tensor = values.to(dtype)
    sd = {"t": tensor, "scalar": tensor[0, 0].clone(), "view": tensor[1:, 1::2]}
    _assert_same(read_torch(save_torch(sd, tmp_path / "d.pt", fmt)), sd)


def test_special_float_values_keep_their_bits(tmp_path, save_torch, fmt):
    special = [float("nan"), float("inf"), -float("inf"), -0.0, 1e-40, 3.4e38]
    sd = {dt: torch.tensor(special, dtype=getattr(torch, dt))
          for dt in ("float32", "float16", "bfloat16", "float64")}
    got = read_torch(save_torch(sd, tmp_path / "s.pt", fmt))
    _assert_same(got, sd)
    assert np.signbit(got["bfloat16"][3]) and np.isnan(got["bfloat16"][0])


def test_views_offsets_strides_and_shared_storage(tmp_path, save_torch, fmt):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = OrderedDict(
        full=base,
        sliced=base[1:, ::2],            # offset 10, strides (10, 2)
        row=base[3],                     # offset 30, 1-d
        transposed=base.t(),             # strides (1, 10)
        broadcast=torch.ones(3, 1).expand(3, 4),  # stride 0
        empty=base[:0],
    )
    got = read_torch(save_torch(sd, tmp_path / "v.pt", fmt))
    _assert_same(got, sd)
    assert got["sliced"].flags.c_contiguous
    # Tensors that shared one storage come back as independent arrays.
    got["full"][1, 0] = -1.0
    assert got["sliced"][0, 0] == 10.0
    assert not np.shares_memory(got["full"], got["row"])


def test_shared_storage_between_parameters(tmp_path, save_torch, fmt):
    weight = torch.randn(4, 3)
    sd = {"encoder.weight": weight, "decoder.weight": weight}  # tied weights
    got = read_torch(save_torch(sd, tmp_path / "tied.pt", fmt))
    _assert_same(got, sd)
    assert not np.shares_memory(got["encoder.weight"], got["decoder.weight"])


def test_parameters_are_read_as_arrays(tmp_path, save_torch, fmt):
    sd = {"w": torch.nn.Parameter(torch.randn(2, 3)), "b": torch.nn.Parameter(torch.zeros(2))}
    _assert_same(read_torch(save_torch(sd, tmp_path / "p.pt", fmt)), sd)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 7, "arch": "vgg16"},
    lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
    lambda sd: {"model": {"state_dict": sd}, "epoch": 1},
], ids=["state_dict", "model", "model.state_dict"])
def test_nested_checkpoints(tmp_path, vgg_sd, save_torch, fmt, wrap):
    got = read_torch(save_torch(wrap(vgg_sd), tmp_path / "ckpt.pth", fmt))
    _assert_same(got, vgg_sd)


def test_tensors_outside_the_state_dict_are_not_returned(tmp_path, vgg_sd, save_torch, fmt):
    ckpt = {"model": vgg_sd, "optimizer": {"state": {0: {"momentum_buffer": torch.ones(5)}}}}
    got = read_torch(save_torch(ckpt, tmp_path / "ckpt.pth", fmt))
    assert set(got) == set(vgg_sd)


def test_data_parallel_prefix_is_stripped(tmp_path, vgg_sd, save_torch, fmt):
    wrapped = OrderedDict((f"module.{k}", v) for k, v in vgg_sd.items())
    got = read_torch(save_torch({"state_dict": wrapped}, tmp_path / "dp.pth", fmt))
    _assert_same(got, vgg_sd)


def test_nested_dicts_are_flattened_with_dots(tmp_path, save_torch, fmt):
    sd = {"encoder": {"conv": {"weight": torch.ones(2, 2)}}, "head.bias": torch.zeros(3)}
    got = read_torch(save_torch(sd, tmp_path / "n.pt", fmt))
    assert list(got) == ["encoder.conv.weight", "head.bias"]
    assert np.array_equal(got["encoder.conv.weight"], np.ones((2, 2), np.float32))


def test_zip_prefix_follows_the_file_name(tmp_path, vgg_sd, save_torch):
    path = save_torch(vgg_sd, tmp_path / "some-odd.name.pth", "zip")
    assert any(n.endswith("/data.pkl") for n in zipfile.ZipFile(path).namelist())
    _assert_same(read_torch(path), vgg_sd)


def _rezip(src, dst, *, big_endian=False, compression=zipfile.ZIP_STORED):
    """Copy a torch zip checkpoint of float32 tensors, optionally as a big-endian file."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if big_endian and "/data/" in info.filename and "/.data/" not in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            if big_endian and info.filename.endswith("/byteorder"):
                data = b"big"
            zout.writestr(info.filename, data)
    return dst


def test_big_endian_zip_is_converted(tmp_path, vgg_sd, save_torch):
    src = save_torch(vgg_sd, tmp_path / "le.pth", "zip")
    got = read_torch(_rezip(src, tmp_path / "be.pth", big_endian=True))
    _assert_same(got, vgg_sd)
    assert got["features.0.weight"].dtype.isnative


def test_compressed_zip_members_are_read(tmp_path, vgg_sd, save_torch):
    src = save_torch(vgg_sd, tmp_path / "plain.pth", "zip")
    got = read_torch(_rezip(src, tmp_path / "deflated.pth", compression=zipfile.ZIP_DEFLATED))
    _assert_same(got, vgg_sd)


class _OldStorage:
    """A storage as pre-0.4 torch pickled it: possibly a view into a root storage."""

    def __init__(self, root_key, root_numel, view=None):
        self.root_key, self.root_numel, self.view = root_key, root_numel, view


class _OldTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return torch._utils._rebuild_tensor, self.args


class _OldPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _OldStorage):
            return ("storage", torch.FloatStorage, obj.root_key, "cpu", obj.root_numel, obj.view)
        return None


def test_hand_written_old_legacy_file_with_storage_views(tmp_path, legacy_header, storage_record):
    # Old torchvision-era files: `_rebuild_tensor` (no requires_grad) and storage views.
    root = np.arange(20, dtype=np.float32)
    whole = _OldStorage("140", 20)
    view = _OldStorage("140", 20, view=("141", 8, 12))  # elements 8..19 of the root
    obj = OrderedDict(a=_OldTensor(whole, 0, (4, 5), (5, 1)), b=_OldTensor(view, 2, (2, 3), (1, 2)))
    body = io.BytesIO()
    _OldPickler(body, protocol=2).dump(obj)
    data = (legacy_header + body.getvalue() + pickle.dumps(["140"], protocol=2)
            + storage_record(root.tobytes(), 4))
    path = tmp_path / "old.pth"
    path.write_bytes(data)
    got = read_torch(path)
    assert np.array_equal(got["a"], root.reshape(4, 5))
    expected_b = np.lib.stride_tricks.as_strided(root[10:], (2, 3), (4, 8))
    assert np.array_equal(got["b"], expected_b) and got["b"].dtype == np.float32
