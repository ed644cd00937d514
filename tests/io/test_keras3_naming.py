"""cnnkit.io.keras3: Keras 3 storage paths (``conv2d_3/0``) named after the file, its config or a model."""

from __future__ import annotations

import numpy as np
import pytest

from cnnkit.errors import WeightsError
from cnnkit.io.keras3 import (is_storage_layout, layer_kind, name_by_structure, name_layers, paths_from_config,
                              snake_case)


@pytest.mark.parametrize("class_name, path", [
    ("Conv2D", "conv2d"), ("Dense", "dense"), ("MaxPooling2D", "max_pooling2d"),
    ("BatchNormalization", "batch_normalization"), ("DepthwiseConv2D", "depthwise_conv2d"),
    ("GlobalAveragePooling2D", "global_average_pooling2d"), ("InputLayer", "input_layer"),
    ("ZeroPadding2D", "zero_padding2d"), ("ReLU", "re_lu"), ("Conv2DTranspose", "conv2d_transpose"),
    ("Functional", "functional"),
])
def test_snake_case_is_the_path_keras_stores_a_class_under(class_name, path):
    assert snake_case(class_name) == path


@pytest.mark.parametrize("path, kind", [("conv2d", ("conv2d", 0)), ("conv2d_1", ("conv2d", 1)),
                                        ("conv2d_10", ("conv2d", 10)), ("dense_2", ("dense", 2)),
                                        ("conv2d_transpose_3", ("conv2d_transpose", 3)),
                                        ("functional/batch_normalization_7", ("batch_normalization", 7))])
def test_layer_kind_splits_the_number_off(path, kind):
    assert layer_kind(path) == kind


def _arrays(*keys):
    return {key: np.full(1, i, np.float32) for i, key in enumerate(keys)}


def test_storage_layout_is_recognised_only_when_every_key_is_a_position():
    assert is_storage_layout(_arrays("conv2d/0", "conv2d_10/1", "functional/dense/0"))
    assert not is_storage_layout(_arrays("conv2d/0", "block1_conv1/kernel"))
    assert not is_storage_layout({})


def test_named_layers_take_keras_variable_names_in_creation_order():
    state = _arrays("conv2d/1", "conv2d/0", "batch_normalization/0", "batch_normalization/1",
                    "batch_normalization/2", "batch_normalization/3", "depthwise_conv2d/0", "other/0")
    names = {"conv2d": "block1_conv1", "batch_normalization": "bn", "depthwise_conv2d": "dw"}
    got = name_layers(state, names, "f")
    assert got["block1_conv1/kernel"] is state["conv2d/0"] and got["block1_conv1/bias"] is state["conv2d/1"]
    assert [k for k in got if k.startswith("bn/")] == ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]
    assert got["dw/depthwise_kernel"] is state["depthwise_conv2d/0"]
    assert got["other/0"] is state["other/0"]   # a path without a name keeps its key
    assert len(got) == len(state)


def test_without_a_config_the_count_tells_switches_all_on_or_all_off():
    got = name_layers(_arrays("conv2d/0", "batch_normalization/0", "batch_normalization/1"),
                      {"conv2d": "c", "batch_normalization": "b"}, "f")
    assert list(got) == ["c/kernel", "b/moving_mean", "b/moving_variance"]
    with pytest.raises(WeightsError, match=r"f: layer batch_normalization holds 3 variables.*load the \.keras file"):
        name_layers(_arrays("batch_normalization/0", "batch_normalization/1", "batch_normalization/2"),
                    {"batch_normalization": "b"}, "f")


def test_the_config_tells_which_variables_exist():
    state = _arrays("batch_normalization/0", "batch_normalization/1", "batch_normalization/2")
    got = name_layers(state, {"batch_normalization": "b"}, "f", {"batch_normalization": {"center": False}})
    assert list(got) == ["b/gamma", "b/moving_mean", "b/moving_variance"]
    with pytest.raises(WeightsError, match=r"layer conv2d holds 2 variables, a conv2d so configured has 1 \(kernel\)"):
        name_layers(_arrays("conv2d/0", "conv2d/1"), {"conv2d": "c"}, "f", {"conv2d": {"use_bias": False}})


@pytest.mark.parametrize("keys, names, match", [
    (("conv2d/0", "conv2d_1/0"), {"conv2d": "a", "conv2d_1": "a"}, r"conv2d and conv2d_1 are both named 'a'"),
    (("conv2d/0", "conv2d/2"), {"conv2d": "a"}, r"holds variables \[0, 2\], not 0 to 1"),
    (("conv2d/0", "a/kernel"), {"conv2d": "a"}, r"weight 'a/kernel' is named twice"),
])
def test_inconsistent_names_are_refused(keys, names, match):
    with pytest.raises(WeightsError, match=match):
        name_layers(_arrays(*keys), names, "f")


ORDER = {"conv2d": ["block1_conv1", "block1_conv2", "block2_conv1"], "dense": ["fc1", "fc2", "predictions"]}


def test_structure_numbers_each_kind_in_model_order_not_text_order():
    keys = [f"conv2d{suffix}/{i}" for suffix in ("", "_1", "_2") for i in (0, 1)] + ["dense/0", "dense/1"]
    got = name_by_structure(_arrays(*sorted(keys)), ORDER, "f", "m")
    assert set(got) == {f"{layer}/{v}" for layer in ORDER["conv2d"] + ["fc1"] for v in ("kernel", "bias")}
    assert got["block2_conv1/kernel"][0] == sorted(keys).index("conv2d_2/0")


def test_structure_with_twelve_layers_puts_conv2d_10_after_conv2d_9():
    order = {"conv2d": [f"c{i}" for i in range(12)]}
    state = _arrays(*sorted(f"conv2d{'' if i == 0 else f'_{i}'}/0" for i in range(12)))  # conv2d_10 sorts before _2
    got = name_by_structure(state, order, "f", "m")
    assert all(got[f"c{i}/kernel"] is state[f"conv2d{'' if i == 0 else f'_{i}'}/0"] for i in range(12))


@pytest.mark.parametrize("keys, match", [
    (("conv2d/0", "conv2d_1/0", "conv2d_2/0", "conv2d_3/0"),
     r"f does not have the layers of m: it holds 4 conv2d layers, m has 3"),
    (("conv2d/0", "conv2d_2/0"), r"its conv2d layers are numbered \[0, 2\], with gaps"),
    (("depthwise_conv2d/0",), r"it holds 1 depthwise_conv2d layers, m has 0"),
    (("functional/conv2d/0",), r"layer functional/conv2d is inside a nested model"),
])
def test_a_file_that_is_not_the_models_structure_is_refused(keys, match):
    with pytest.raises(WeightsError, match=match):
        name_by_structure(_arrays(*keys), ORDER, "f", "m")


def _layer(class_name, name, **config):
    return {"class_name": class_name, "config": {"name": name, **config}}


def test_config_numbers_each_class_in_list_order_and_follows_nested_models():
    inner = {"class_name": "Functional", "config": {"name": "base", "layers": [
        _layer("InputLayer", "in"), _layer("Conv2D", "inner_conv")]}}
    config = {"class_name": "Sequential", "config": {"name": "m", "layers": [
        _layer("InputLayer", "input_layer"), _layer("Conv2D", "a", use_bias=False), _layer("MaxPooling2D", "p"),
        _layer("Conv2D", "b"), inner, _layer("Dense", "fc")]}}
    names, options = paths_from_config(config, "c")
    assert names == {"conv2d": "a", "max_pooling2d": "p", "conv2d_1": "b", "functional": "base",
                     "functional/conv2d": "inner_conv", "dense": "fc"}
    assert options["conv2d"]["use_bias"] is False
    assert paths_from_config({"class_name": "MyModel", "config": {"units": 3}}, "c") == ({}, {})


@pytest.mark.parametrize("config, match", [
    ([1, 2], r"c is not a JSON object"),
    ({"config": {"layers": 3}}, r"c: config.json's layers at depth 0 are not a list"),
    ({"config": {"layers": [{"class_name": "Conv2D", "config": {}}]}},
     r"c: config.json's layer 0 is not a Keras layer"),
    ({"config": {"layers": [_layer("Conv2D", "a/b")]}}, r"layer 0 is not a Keras layer entry"),
    ({"config": {"layers": [_layer("Conv2D", 7)]}}, r"layer 0 is not a Keras layer entry"),
])
def test_a_config_not_shaped_as_keras_writes_it_is_refused(config, match):
    with pytest.raises(WeightsError, match=match):
        paths_from_config(config, "c")


def test_deeply_nested_configs_are_refused():
    config = _layer("Conv2D", "x")
    for depth in range(40):
        config = {"class_name": "Functional", "config": {"name": f"m{depth}", "layers": [config]}}
    with pytest.raises(WeightsError, match=r"c: models nest deeper than 32 levels in config.json"):
        paths_from_config(config, "c")


def test_unnamed_keras3_weights_for_a_torchvision_layout_are_refused(tmp_path):
    """No Keras model has torchvision's layout, so no Keras order names a file's layers after it; a
    Keras file given to a depth Keras lacks is refused before any model is built."""
    h5py = pytest.importorskip("h5py", reason="the Keras reader needs the optional h5py")
    import cnnkit
    from cnnkit.errors import ConfigError

    path = tmp_path / "resnet.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/conv2d/vars").create_dataset("0", data=np.zeros((7, 7, 3, 4), np.float32))
    options = {"width": 1 / 16, "input_shape": (32, 32, 3), "num_classes": 3}
    with pytest.raises(WeightsError, match=r"resnet.weights.h5: Keras 3 weights that name no layer are mapped by the "
                                           r"model's Keras layer order; resnet18 is in torchvision's layout, which "
                                           r"no Keras model has"):
        cnnkit.models.resnet18(weights=path, layout="torchvision", **options)
    with pytest.raises(ConfigError, match=r"resnet18: weights=.*resnet.weights.h5' is a Keras file, and Keras has no "
                                          r"ResNet-18"):
        cnnkit.models.resnet18(weights=path, **options)


def test_any_json_gives_names_or_a_weights_error():
    """config.json is untrusted: whatever JSON it holds, the walk returns or raises WeightsError.
    (The fuzz mutates archives, whose CRC check refuses most changes before the JSON is parsed.)"""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                        st.sampled_from(["Conv2D", "Dense", "InputLayer", "a/b", "", "layers", "config", "name"]))
    keys = st.sampled_from(["class_name", "config", "name", "layers", "use_bias", "x"])
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(keys, inner, max_size=4)), max_leaves=30)

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @hypothesis.given(values)
    def walk(config):
        try:
            names, options = paths_from_config(config, "c")
        except WeightsError:
            return
        assert set(names) == set(options) and all(isinstance(n, str) and n for n in names.values())

    walk()
