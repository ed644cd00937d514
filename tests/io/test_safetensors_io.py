"""safetensors: round trip, metadata, atomic writes and read errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cnnkit.errors import WeightsError
from cnnkit.io import read_safetensors, read_safetensors_metadata, write_safetensors


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "block1_conv1.kernel": rng.standard_normal((3, 3, 3, 8)).astype(np.float32),
        "block1_conv1.bias": rng.standard_normal(8).astype(np.float32),
        "fc.weight": rng.standard_normal((4, 5)),                       # float64
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),          # 0-d
        "half": rng.standard_normal(6).astype(np.float16),
        "mask": rng.standard_normal(5) > 0,
        "ids": np.arange(10, dtype=np.uint8),
    }


def test_round_trip_is_bit_exact(tmp_path):
    tensors = _tensors()
    path = tmp_path / "model.safetensors"
    write_safetensors(path, tensors)
    got = read_safetensors(path)
    assert set(got) == set(tensors)
    for name, array in tensors.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


def test_read_arrays_are_writable(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"w": np.zeros(3, np.float32)})
    got = read_safetensors(path)["w"]
    got += 1  # weights loaded for fine-tuning must be trainable in place
    assert np.array_equal(got, np.ones(3, np.float32))


def test_non_contiguous_arrays_are_written_by_value(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    views = {"transposed": base.T, "strided": base[::2, 1::2], "fortran": np.asfortranarray(base)}
    path = tmp_path / "views.safetensors"
    write_safetensors(path, views)
    got = read_safetensors(path)
    for name, view in views.items():
        assert np.array_equal(got[name], view), name


def test_metadata_round_trip(tmp_path):
    arch = json.dumps({"name": "vgg16", "input_shape": [224, 224, 3]})
    path = tmp_path / "ckpt.safetensors"
    write_safetensors(path, {"w": np.ones(2, np.float32)}, metadata={"architecture": arch, "epoch": "3"})
    meta = read_safetensors_metadata(path)
    assert meta == {"architecture": arch, "epoch": "3"}
    assert json.loads(meta["architecture"])["name"] == "vgg16"


def test_metadata_is_empty_when_absent(tmp_path):
    path = tmp_path / "plain.safetensors"
    write_safetensors(path, {"w": np.ones(2, np.float32)})
    assert read_safetensors_metadata(path) == {}


def test_metadata_values_must_be_strings(tmp_path):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(WeightsError, match=r"metadata must map str to str, received 'epoch': int"):
        write_safetensors(path, {"w": np.ones(2)}, metadata={"epoch": 3})
    assert not path.exists()


@pytest.mark.parametrize("tensors, match", [
    ({"w": [1.0, 2.0]}, r"tensor 'w' must be a numpy array, received list"),
    ({3: np.ones(2)}, r"tensor names must be str, received 3"),
    ({"w": np.array([object()])}, r"cannot write .*bad\.safetensors"),
])
def test_bad_tensors_are_rejected(tmp_path, tensors, match):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(WeightsError, match=match):
        write_safetensors(path, tensors)
    assert os.listdir(tmp_path) == []


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": np.zeros(3, np.float32)})
    write_safetensors(path, {"w": np.ones(3, np.float32)})
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert np.array_equal(read_safetensors(path)["w"], np.ones(3, np.float32))


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": np.zeros(3, np.float32)})
    with pytest.raises(WeightsError):
        write_safetensors(path, {"w": np.array([object()])})
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert np.array_equal(read_safetensors(path)["w"], np.zeros(3, np.float32))


def test_write_into_missing_directory(tmp_path):
    path = tmp_path / "no-such-dir" / "m.safetensors"
    with pytest.raises(WeightsError, match=r"cannot write .*m\.safetensors.*directory exists"):
        write_safetensors(path, {"w": np.ones(2)})


@pytest.mark.parametrize("reader", [read_safetensors, read_safetensors_metadata])
def test_missing_file(tmp_path, reader):
    with pytest.raises(WeightsError, match=r"cannot read .*gone\.safetensors: file not found"):
        reader(tmp_path / "gone.safetensors")


@pytest.mark.parametrize("reader", [read_safetensors, read_safetensors_metadata])
@pytest.mark.parametrize("content", [b"not a safetensors file at all", b"\x00" * 3], ids=["text", "tiny"])
def test_not_a_safetensors_file(tmp_path, reader, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"junk\.safetensors is not a readable safetensors file"):
        reader(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    write_safetensors(path, _tensors())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.safetensors is not a readable safetensors file"):
        read_safetensors(path)


def test_big_endian_arrays_are_stored_by_value(tmp_path):
    values = np.array([1.5, -2.25, 1e30], dtype=">f4")
    path = tmp_path / "be.safetensors"
    write_safetensors(path, {"w": values})
    got = read_safetensors(path)["w"]
    assert got.dtype == np.float32 and np.array_equal(got, values)
