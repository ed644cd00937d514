"""CIFAR (pickled python batches) and MNIST (IDX) readers on small files in the real formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from cnnkit.data import cifar10, cifar100, mnist, read_idx
from cnnkit.errors import ConfigError, DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


# -- Python 2 pickles, byte for byte as the CIFAR archives hold them (protocol 2, cPickle) --

def _py2_str(s: bytes) -> bytes:
    if len(s) < 256:
        return b"U" + bytes([len(s)]) + s          # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(s)) + s     # BINSTRING


def _py2_int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)               # BININT


def _py2_uint8_array(a: np.ndarray) -> bytes:
    out = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
           + b"K\x00\x85" + _py2_str(b"b") + b"\x87R"          # _reconstruct(ndarray, (0,), 'b')
           + b"(K\x01" + b"(" + b"".join(_py2_int(d) for d in a.shape) + b"t"
           + b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
           + b"(K\x03" + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + b"K\x00tb"
           + b"\x89" + _py2_str(a.tobytes()) + b"tb")          # (1, shape, dtype, False, raw)
    return out


def _py2_value(v) -> bytes:
    if isinstance(v, np.ndarray):
        return _py2_uint8_array(v)
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, list):
        return b"](" + b"".join(_py2_value(e) for e in v) + b"e"
    return _py2_int(v)


def _py2_pickle(d: dict) -> bytes:
    items = b"".join(_py2_str(k) + _py2_value(v) for k, v in d.items())
    return b"\x80\x02}(" + items + b"u."  # SETITEMS


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _write_cifar10(root, per_batch=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data = _images(per_batch, i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        batch = {b"batch_label": b"training batch", b"labels": labels, b"data": data,
                 b"filenames": [b"x.png"] * per_batch}
        # Batches 1-5 as the real Python 2 archive; the test batch as Python 3 would write it.
        raw = _py2_pickle(batch) if i < 5 else pickle.dumps(batch, protocol=4)
        (folder / name).write_bytes(raw)
        batches[name] = (data, labels)
    meta = {b"num_cases_per_batch": per_batch,
            b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_pickle(meta))
    return batches


def test_py2_helper_writes_what_pickle_reads():
    data = _images(2, 0)
    loaded = pickle.loads(_py2_pickle({b"data": data, b"labels": [1, 2]}), encoding="bytes")
    np.testing.assert_array_equal(loaded[b"data"], data)
    assert loaded[b"labels"] == [1, 2]


def test_cifar10_train_and_test(tmp_path):
    batches = _write_cifar10(tmp_path)
    train = cifar10(tmp_path)
    assert len(train) == 15 and train.x.shape == (15, 32, 32, 3) and train.x.dtype == np.uint8
    assert train.classes == CIFAR10_NAMES
    data, labels = batches["data_batch_2"]
    # Row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
    first = train.x[3]
    np.testing.assert_array_equal(first[..., 0].ravel(), data[0, :1024])
    np.testing.assert_array_equal(first[..., 2].ravel(), data[0, 2048:])
    assert first[1, 2, 1] == data[0, 1024 + 32 + 2]
    np.testing.assert_array_equal(train.y[3:6], labels)
    img, label = train[3]
    assert img.dtype == np.float32 and label == labels[0]
    test = cifar10(tmp_path / "cifar-10-batches-py", train=False)
    np.testing.assert_array_equal(test.x.reshape(3, 32 * 32, 3).transpose(0, 2, 1).reshape(3, -1),
                                  batches["test_batch"][0])


def test_cifar10_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"no 'batches.meta'.*cifar-10-batches-py"):
        cifar10(tmp_path)
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"missing batch file .*data_batch_4"):
        cifar10(tmp_path)


def _write_cifar100(root, n=4):
    folder = root / "cifar-100-python"
    folder.mkdir()
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    for i, part in enumerate(["train", "test"]):
        d = {b"data": _images(n, 10 + i), b"fine_labels": [99, 0, 5, 42][:n],
             b"coarse_labels": [19, 0, 1, 7][:n]}
        (folder / part).write_bytes(_py2_pickle(d))


@pytest.mark.parametrize("label,classes,first", [("fine", 100, 99), ("coarse", 20, 19)])
def test_cifar100_fine_and_coarse(tmp_path, label, classes, first):
    _write_cifar100(tmp_path)
    ds = cifar100(tmp_path, train=False, label=label)
    assert len(ds.classes) == classes and ds.classes[0] == f"{label}0"
    assert ds.y[0] == first and ds.x.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(ds.x[1, ..., 0].ravel(), _images(4, 11)[1, :1024])
    with pytest.raises(ConfigError, match=r"label='medium'"):
        cifar100(tmp_path, label="medium")


def test_cifar_batch_without_labels_key(tmp_path):
    _write_cifar10(tmp_path)
    bad = {b"data": _images(2, 0)}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"test_batch: missing key 'labels'"):
        cifar10(tmp_path, train=False)


def test_cifar_file_that_runs_code_is_refused(tmp_path):
    _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match=r"test_batch: refusing to load the global \S*open"):
        cifar10(tmp_path, train=False)
    assert not marker.exists()


# -- IDX --

def _idx(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B),
                                        (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_types_and_gzip(tmp_path, dtype, code, gz):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    raw = _idx(a, code)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_read_idx_rejects_bad_files(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x89PNG....")
    with pytest.raises(DataError, match=r"not an IDX file"):
        read_idx(path)
    raw = _idx(np.zeros((4, 5), np.uint8), 0x08)
    path.write_bytes(raw[:-1])
    with pytest.raises(DataError, match=r"shape \(4, 5\) of uint8 \(20 bytes\).*holds 19"):
        read_idx(path)
    path.write_bytes(raw + b"\0")
    with pytest.raises(DataError, match=r"holds more data bytes"):
        read_idx(path)
    with pytest.raises(DataError, match=r"not found"):
        read_idx(tmp_path / "missing")


def _write_mnist(folder, n_train=5, n_test=3, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, array, rank in (("images", images, 3), ("labels", labels, 1)):
            raw = _idx(array, 0x08)
            name = f"{prefix}-{kind}-idx{rank}-ubyte"
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("layout,gz", [("", True), ("MNIST/raw", False)])
def test_mnist(tmp_path, layout, gz):
    written = _write_mnist(tmp_path / layout if layout else tmp_path, gz=gz)
    train, test = mnist(tmp_path), mnist(tmp_path, train=False)
    assert train.x.shape == (5, 28, 28, 1) and len(test) == 3
    np.testing.assert_array_equal(train.x[..., 0], written["train"][0])
    np.testing.assert_array_equal(test.y, written["t10k"][1])
    assert train.y.dtype == np.int64 and train.classes[9] == "9"


def test_mnist_mismatched_counts_and_missing_files(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(2, np.uint8), 0x08))
    with pytest.raises(DataError, match=r"expected 3 labels .*t10k-images-idx3-ubyte.*\(2,\)"):
        mnist(tmp_path, train=False)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=r"no 'train-images-idx3-ubyte'"):
        mnist(tmp_path)
