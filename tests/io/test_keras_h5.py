"""read_keras_h5 on files written here with h5py in the Keras 2 and Keras 3 layouts."""

from __future__ import annotations

import sys

import numpy as np
import pytest

try:  # the optional h5py: without it the tests marked `h5py` skip, the rest run
    import h5py
except ImportError:
    h5py = None

from cnnkit.errors import CnnkitError, WeightsError
from cnnkit.io import read_keras_h5
from cnnkit.io.keras_h5 import read_keras_h5_with_names

RNG = np.random.default_rng(0)
# name -> weights, in the order of keras.applications.VGG16 (first and last blocks only).
LAYERS = {
    "input_1": {},
    "block1_conv1": {"kernel": RNG.standard_normal((3, 3, 3, 8)).astype(np.float32),
                     "bias": RNG.standard_normal(8).astype(np.float32)},
    "block1_pool": {},
    "fc1": {"kernel": RNG.standard_normal((12, 6)).astype(np.float32),
            "bias": RNG.standard_normal(6).astype(np.float32)},
    "predictions": {"kernel": RNG.standard_normal((6, 4)).astype(np.float32),
                    "bias": RNG.standard_normal(4).astype(np.float32)},
}


def _write_keras2(path, weight_name=lambda layer, w: f"{layer}/{w}:0", root_group=None, chunked=False):
    """The layout of keras save_weights(.h5) and the Keras Applications downloads."""
    with h5py.File(path, "w") as f:
        group = f.create_group(root_group) if root_group else f
        names = [name.encode() for name in LAYERS]
        if chunked:  # Keras splits attributes larger than the HDF5 header limit
            group.attrs["layer_names0"], group.attrs["layer_names1"] = names[:2], names[2:]
        else:
            group.attrs["layer_names"] = names
        group.attrs["backend"], group.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for layer, weights in LAYERS.items():
            g = group.create_group(layer)
            weight_names = [weight_name(layer, w) for w in weights]
            g.attrs["weight_names"] = np.array([n.encode() for n in weight_names], dtype="S")
            for name, w in zip(weight_names, weights):
                g.create_dataset(name, data=weights[w])
    return path


def _expected_keras2():
    return {f"{layer}/{w}": value for layer, ws in LAYERS.items() for w, value in ws.items()}


def _assert_same(got, want):
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key


@pytest.mark.h5py
def test_keras2_application_layout(tmp_path):
    got = read_keras_h5(_write_keras2(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"))
    _assert_same(got, _expected_keras2())
    assert got["block1_conv1/kernel"].shape == (3, 3, 3, 8)  # HWIO, as stored
    assert got["fc1/kernel"].shape == (12, 6)                # (in, out)


@pytest.mark.h5py
def test_keras2_whole_model_file(tmp_path):
    path = _write_keras2(tmp_path / "model.h5", root_group="model_weights")
    _assert_same(read_keras_h5(path), _expected_keras2())


@pytest.mark.h5py
def test_keras2_chunked_layer_names(tmp_path):
    _assert_same(read_keras_h5(_write_keras2(tmp_path / "c.h5", chunked=True)), _expected_keras2())


@pytest.mark.h5py
def test_keras1_flat_weight_names(tmp_path):
    old_names = {"kernel": "W", "bias": "b"}
    path = _write_keras2(tmp_path / "k1.h5", weight_name=lambda layer, w: f"{layer}_{old_names[w]}_1:0")
    _assert_same(read_keras_h5(path), _expected_keras2())


def _write_keras3(path):
    """keras 3 ``save_weights("x.weights.h5")``: layers/<class_name>/vars/<index>."""
    with h5py.File(path, "w") as f:
        f.create_group("vars")
        f.create_group("optimizer/vars").create_dataset("0", data=np.array(5))
        for name, weights in [("conv2d", LAYERS["block1_conv1"]), ("max_pooling2d", {}),
                              ("dense", LAYERS["fc1"]), ("dense_1", LAYERS["predictions"])]:
            group = f.create_group(f"layers/{name}/vars")
            for index, value in enumerate(weights.values()):
                group.create_dataset(str(index), data=value)
        for i in range(2, 11):  # conv2d_2 .. conv2d_10: order must be natural, not alphabetic
            f.create_group(f"layers/conv2d_{i}/vars").create_dataset("0", data=np.full(1, i, np.float32))
    return path


@pytest.mark.h5py
def test_keras3_weights_h5_layout(tmp_path):
    got = read_keras_h5(_write_keras3(tmp_path / "model.weights.h5"))
    assert np.array_equal(got["conv2d/0"], LAYERS["block1_conv1"]["kernel"])
    assert np.array_equal(got["conv2d/1"], LAYERS["block1_conv1"]["bias"])
    assert np.array_equal(got["dense_1/0"], LAYERS["predictions"]["kernel"])
    convs = [k for k in got if k.startswith("conv2d_")]
    assert convs == [f"conv2d_{i}/0" for i in range(2, 11)]
    assert not any(k.startswith("optimizer") for k in got)  # optimizer state is not weights
    assert len(got) == 6 + 9


@pytest.mark.h5py
def test_keras3_bfloat16_is_widened(tmp_path):
    path = tmp_path / "bf.weights.h5"
    values = np.array([1.5, -2.0, 3.140625], dtype=np.float32)
    with h5py.File(path, "w") as f:
        ds = f.create_group("layers/dense/vars").create_dataset("0", data=(values.view(np.uint32) >> 16).astype(np.uint16))
        ds.attrs["dtype"] = "bfloat16"
    got = read_keras_h5(path)["dense/0"]
    assert got.dtype == np.float32 and np.array_equal(got, values)


def test_missing_h5py_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(CnnkitError, match=r"pip install cnnkit\[h5\]"):
        read_keras_h5(tmp_path / "any.h5")


@pytest.mark.h5py
def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"cannot read .*absent\.h5: file not found"):
        read_keras_h5(tmp_path / "absent.h5")


@pytest.mark.h5py
def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("not hdf5")
    with pytest.raises(WeightsError, match=r"text\.h5 is not a readable HDF5 file"):
        read_keras_h5(path)


@pytest.mark.h5py
def test_hdf5_without_keras_layout(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    with pytest.raises(WeightsError, match=r"other\.h5 is HDF5 but not a Keras weights file.*'images'"):
        read_keras_h5(path)


@pytest.mark.h5py
def test_listed_layer_without_group(tmp_path):
    path = _write_keras2(tmp_path / "broken.h5")
    with h5py.File(path, "a") as f:
        del f["fc1"]
    with pytest.raises(WeightsError, match=r"broken\.h5: layer 'fc1' is listed in layer_names but has no group"):
        read_keras_h5(path)


@pytest.mark.h5py
def test_missing_weight_dataset(tmp_path):
    path = _write_keras2(tmp_path / "broken.h5")
    with h5py.File(path, "a") as f:
        del f["fc1/fc1/bias:0"]
    with pytest.raises(WeightsError, match=r"broken\.h5 is a corrupted Keras weights file"):
        read_keras_h5(path)


@pytest.mark.h5py
def test_keras3_layer_names_are_returned_beside_the_weights(tmp_path):
    path = _write_keras3(tmp_path / "named.weights.h5")
    with h5py.File(path, "a") as f:
        f["layers/conv2d/vars"].attrs["name"] = "block1_conv1"
        f["layers/dense_1/vars"].attrs["name"] = np.bytes_(b"predictions")  # fixed-length bytes too
    weights, names = read_keras_h5_with_names(path)
    assert names == {"conv2d": "block1_conv1", "dense_1": "predictions"}
    assert list(weights) == list(read_keras_h5(path))
    assert read_keras_h5_with_names(_write_keras2(tmp_path / "k2.h5"))[1] == {}


@pytest.mark.h5py
@pytest.mark.parametrize("name, match", [
    (np.int64(3), r"attribute 'name' of /layers/conv2d/vars is not a list of at most"),
    ("a/b", r"the name of layer group /layers/conv2d/vars is 'a/b', not one layer name"),
    ("", r"the name of layer group /layers/conv2d/vars is '', not one layer name"),
    ("x" * 2000, r"not one layer name of 1 to 1024 characters"),
    (np.array([b"a", b"b"]), r"is 2 strings, not one layer name"),
])
def test_keras3_layer_names_not_as_keras_writes_them_are_refused(tmp_path, name, match):
    path = _write_keras3(tmp_path / "bad.weights.h5")
    with h5py.File(path, "a") as f:
        f["layers/conv2d/vars"].attrs["name"] = name
    with pytest.raises(WeightsError, match=match):
        read_keras_h5_with_names(path)


@pytest.mark.h5py
def test_an_empty_weight_names_attribute_of_any_type_is_no_weights(tmp_path):
    """Keras 3's legacy model.save("x.h5") writes a layer without weights as an empty float64 array."""
    path = _write_keras2(tmp_path / "k3legacy.h5")
    with h5py.File(path, "a") as f:
        f["input_1"].attrs["weight_names"] = np.array([])
    _assert_same(read_keras_h5(path), _expected_keras2())


@pytest.mark.h5py
def test_big_endian_weights_come_back_native(tmp_path):
    """HDF5 keeps the byte order it was given; the arrays handed to a model are native."""
    path = tmp_path / "be.weights.h5"
    values = np.array([1.5, -2.0, 3.25], dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_group("layers/dense/vars").create_dataset("0", data=values.astype(">f4"))
    got = read_keras_h5(path)["dense/0"]
    assert got.dtype.isnative and got.dtype == np.float32 and np.array_equal(got, values)
