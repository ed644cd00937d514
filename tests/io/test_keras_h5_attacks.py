"""Hostile Keras `.h5` files: every way HDF5 has to read another file is refused, and so is a
dataset whose size its bytes in the file do not justify."""

from __future__ import annotations


import numpy as np
import pytest

from cnnkit.errors import WeightsError
from cnnkit.io import read_keras_h5

from refusal import assert_refused

h5py = pytest.importorskip("h5py", reason="the Keras reader needs the optional h5py")

KERNEL = np.arange(8, dtype=np.float32)
SECRET = b"password=hunter2" * 2  # 32 bytes: 8 float32 values if read as the kernel


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def other_h5(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("secret", data=np.frombuffer(SECRET, np.float32))
        f.create_group("group").create_dataset("kernel:0", data=np.frombuffer(SECRET, np.float32))
    return path


def _keras2(path, make_kernel):
    """A Keras 2 file with one layer 'dense' whose kernel ``make_kernel(group, name)`` writes."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        group = f.create_group("dense")
        group.attrs["weight_names"] = [b"dense/kernel:0"]
        make_kernel(group.create_group("dense"), "kernel:0")
    return path


def _refused(path, match: str) -> str:
    return assert_refused(read_keras_h5, path, WeightsError, match)


def test_the_baseline_is_read(tmp_path):
    path = _keras2(tmp_path / "w.h5", lambda g, name: g.create_dataset(name, data=KERNEL))
    assert np.array_equal(read_keras_h5(path)["dense/kernel"], KERNEL)


def test_external_raw_storage_is_refused(tmp_path, secret):
    path = _keras2(tmp_path / "w.h5", lambda g, name: g.create_dataset(
        name, shape=(8,), dtype="<f4", external=[(str(secret), 0, 32)]))
    message = _refused(path, r"dataset /dense/dense/kernel:0 keeps its bytes in external file")
    assert str(secret) in message and "hunter2" not in message


def test_an_external_link_to_a_dataset_is_refused(tmp_path, other_h5):
    def link(group, name):
        group[name] = h5py.ExternalLink(str(other_h5), "/secret")

    path = _keras2(tmp_path / "w.h5", link)
    _refused(path, rf"/dense/dense/kernel:0 is an external link to {other_h5}:/secret; "
                   "cnnkit follows no links")


def test_an_external_link_to_a_layer_group_is_refused(tmp_path, other_h5):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f["dense"] = h5py.ExternalLink(str(other_h5), "/group")
    _refused(path, r"/dense is an external link")


def test_a_soft_link_through_an_external_link_is_refused(tmp_path, other_h5):
    # The soft link itself stays in the file, but its path runs through an external link.
    def link(group, name):
        group.file["elsewhere"] = h5py.ExternalLink(str(other_h5), "/")
        group[name] = h5py.SoftLink("/elsewhere/secret")

    path = _keras2(tmp_path / "w.h5", link)
    _refused(path, r"/dense/dense/kernel:0 is a soft link to /elsewhere/secret")


def test_a_virtual_dataset_is_refused(tmp_path, other_h5):
    def virtual(group, name):
        layout = h5py.VirtualLayout(shape=(8,), dtype="<f4")
        layout[:] = h5py.VirtualSource(str(other_h5), "secret", shape=(8,))
        group.create_virtual_dataset(name, layout)

    path = _keras2(tmp_path / "w.h5", virtual)
    _refused(path, r"dataset /dense/dense/kernel:0 is a virtual dataset \(it reads other files\)")


def test_keras3_external_link_is_refused(tmp_path, other_h5):
    path = tmp_path / "model.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars")["0"] = h5py.ExternalLink(str(other_h5), "/secret")
    _refused(path, r"/layers/dense/vars/0 is an external link")


def test_a_dataset_larger_than_its_bytes_in_the_file_is_refused(tmp_path):
    # Declared (250000, 1000) float32, never written: 1 GB of fill value from a 2 KB file.
    path = _keras2(tmp_path / "w.h5", lambda g, name: g.create_dataset(
        name, shape=(250_000, 1000), dtype="<f4"))
    assert path.stat().st_size < 1 << 16
    _refused(path, r"declares shape \(250000, 1000\) \(1000000000 bytes\) but occupies 0 bytes")


def test_a_compression_bomb_dataset_is_refused(tmp_path):
    path = _keras2(tmp_path / "w.h5", lambda g, name: g.create_dataset(
        name, data=np.zeros((4096, 4096), np.float32), compression="gzip", chunks=(1024, 1024)))
    _refused(path, r"cnnkit accepts at most 100:1")


def test_a_string_dataset_is_refused(tmp_path):
    path = _keras2(tmp_path / "w.h5", lambda g, name: g.create_dataset(
        name, data=np.array([b"a", b"b"], dtype=h5py.string_dtype())))
    _refused(path, r"has dtype object, not a number type")


def _zero_free_space_of_global_heap(path) -> None:
    """Set the size of the free-space object (index 0) of the file's global heap to 0."""
    data = bytearray(path.read_bytes())
    start = data.index(b"GCOL")
    size = int.from_bytes(data[start + 8:start + 16], "little")
    at = start + 16
    while at < start + size:
        index = int.from_bytes(data[at:at + 2], "little")
        object_size = int.from_bytes(data[at + 8:at + 16], "little")
        if index == 0:
            data[at + 8:at + 16] = bytes(8)
            path.write_bytes(bytes(data))
            return
        at += 16 + -(-object_size // 8) * 8
    raise AssertionError("no free space in the global heap")


def test_a_global_heap_libhdf5_would_loop_on_is_refused(tmp_path):
    # Layer names as variable-length strings (h5py 3 stores a list of bytes so) live in the
    # global heap; a free-space object of size 0 made libhdf5 spin forever reading them.
    # The read runs in a subprocess so that a hang fails the test instead of blocking it.
    import subprocess
    import sys

    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense", b"pool"]
        group = f.create_group("dense")
        group.attrs["weight_names"] = [b"dense/kernel:0"]
        group.create_group("dense").create_dataset("kernel:0", data=KERNEL)
        f.create_group("pool").attrs["weight_names"] = np.array([], dtype="S1")
    assert f"{read_keras_h5(path)['dense/kernel'][0]}" == "0.0"
    _zero_free_space_of_global_heap(path)
    code = ("from cnnkit.io import read_keras_h5\n"
            f"try:\n    read_keras_h5({str(path)!r})\nexcept Exception as e:\n    print(type(e).__name__, e)")
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("read_keras_h5 hung on a corrupted global heap")
    assert run.stdout.startswith(f"WeightsError {path} is corrupted: the HDF5 global heap at byte"), run.stdout + run.stderr


def test_many_small_fill_value_datasets_are_refused_together(tmp_path):
    # Each declares 960 KiB with no bytes in the file (under the 1 MiB slack of one dataset);
    # 100 of them would read 94 MiB out of a file of a few hundred KB.
    path = tmp_path / "w.h5"
    names = [f"dense_{i}".encode() for i in range(100)]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array(names, dtype="S")
        for name in names:
            group = f.create_group(name.decode())
            group.attrs["weight_names"] = np.array([name + b"/kernel:0"], dtype="S")
            group.create_group(name.decode()).create_dataset("kernel:0", shape=(245_760,), dtype="<f4")
    assert path.stat().st_size < 1 << 20
    _refused(path, r"with it the datasets exceed 8 times the file's size")


@pytest.mark.parametrize("where", ["layer_names", "weight_names"])
def test_name_attributes_that_are_not_strings_are_refused_before_libhdf5_reads_them(tmp_path, where):
    """Found by `make fuzz`: a flipped type byte made `layer_names` a variable-length sequence
    whose corrupted heap crashed libhdf5 (SIGSEGV) as h5py read it; names must be strings."""
    path = _keras2(tmp_path / "w.h5", lambda g, name: g.create_dataset(name, data=KERNEL))
    with h5py.File(path, "r+") as f:
        holder = f if where == "layer_names" else f["dense"]
        del holder.attrs[where]
        sequences = np.empty(1, dtype=object)
        sequences[0] = np.array([1, 2], np.int32)
        holder.attrs.create(where, sequences, dtype=h5py.vlen_dtype(np.int32))
    _refused(path, rf"attribute '{where}' of .* is not a list of at most 100,000 strings")
