"""Sequential: building, names, parameters, freezing and the strict state dict."""

import numpy as np
import pytest

from cnnkit import Sequential
from cnnkit.errors import ConfigError, ShapeError, WeightsError
from cnnkit.layers import BatchNorm2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU, Sigmoid


def small_net(**kwargs):
    return Sequential([Conv2d(4, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(6, 3), BatchNorm2d(), Flatten(),
                       Dense(5), Sigmoid()], input_shape=(8, 10, 3), **kwargs)


def test_build_infers_channels_and_shapes():
    model = small_net()
    assert model.output_shape == (5,)
    assert model["conv2d_2"].parameters()["weight"].shape == (3, 3, 4, 6)
    assert model["dense_1"].parameters()["weight"].shape == (2 * 3 * 6, 5)


def test_generated_names_are_unique_and_stable():
    assert small_net().layer_names() == ["conv2d_1", "relu_1", "max_pool2d_1", "conv2d_2", "batch_norm2d_1",
                                         "flatten_1", "dense_1", "sigmoid_1"]
    with pytest.raises(ConfigError, match=r"layer names must be unique; \['a'\] appear more than once"):
        Sequential([ReLU(name="a"), ReLU(name="a")])


def test_parameters_are_dotted_and_ordered():
    names = list(small_net().parameters())
    assert names == ["conv2d_1.weight", "conv2d_1.bias", "conv2d_2.weight", "conv2d_2.bias",
                     "batch_norm2d_1.weight", "batch_norm2d_1.bias", "dense_1.weight", "dense_1.bias"]


def test_initialisation_is_seeded_and_named():
    a, b, c = small_net(seed=1), small_net(seed=1), small_net(seed=2)
    assert np.array_equal(a.parameters()["conv2d_1.weight"].value, b.parameters()["conv2d_1.weight"].value)
    assert not np.array_equal(a.parameters()["conv2d_1.weight"].value, c.parameters()["conv2d_1.weight"].value)
    assert a["conv2d_1"].init_scheme == "he"      # a ReLU follows
    assert a["dense_1"].init_scheme == "glorot"   # a sigmoid follows
    assert a.parameters()["conv2d_1.weight"].value.dtype == np.float32
    assert not a.parameters()["conv2d_1.bias"].value.any()


def test_he_initialisation_has_the_right_scale():
    model = Sequential([Conv2d(256, 3), ReLU()], input_shape=(8, 8, 128))
    std = model.parameters()["conv2d_1.weight"].value.std()
    assert abs(std - np.sqrt(2 / (9 * 128))) < 0.02 * std


def test_freeze_by_name_block_and_up_to():
    model = small_net()
    assert model.freeze("conv2d") == ["conv2d_1", "conv2d_2"]   # a block prefix
    assert [n for n, p in model.parameters().items() if not p.trainable] == [
        "conv2d_1.weight", "conv2d_1.bias", "conv2d_2.weight", "conv2d_2.bias"]
    model.unfreeze()
    model.freeze(up_to="conv2d_2")
    assert set(model.parameters(trainable_only=True)) == {"batch_norm2d_1.weight", "batch_norm2d_1.bias",
                                                         "dense_1.weight", "dense_1.bias"}
    model.unfreeze("dense_1.bias")
    model.freeze()
    assert model.parameters(trainable_only=True) == {}
    with pytest.raises(ConfigError, match="'fc9' matches no layer or parameter"):
        model.freeze("fc9")


def test_summary_reports_frozen_parameters():
    model = small_net()
    model.freeze("conv2d_1")
    totals = model.summary(format="dict")["totals"]
    assert totals["frozen"] == 4 * 27 + 4 and totals["trainable"] == totals["params"] - totals["frozen"]


def test_state_dict_round_trip_and_strict_errors():
    source, target = small_net(seed=1), small_net(seed=2)
    target.load_state_dict(source.state_dict())
    for name, value in source.state_dict().items():
        assert np.array_equal(target.state_dict()[name], value)
    bad = dict(source.state_dict())
    bad["dense_1.weight"] = np.zeros((3, 3), np.float32)
    del bad["conv2d_1.bias"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(WeightsError) as error:
        target.load_state_dict(bad)
    message = str(error.value)
    assert "dense_1.weight: model (36, 5), given (3, 3)" in message
    assert "missing keys: ['conv2d_1.bias']" in message and "unexpected keys: ['extra']" in message


def test_state_dict_includes_buffers():
    assert "batch_norm2d_1.running_var" in small_net().state_dict()


def test_strict_model_refuses_unread_rows():
    Sequential([Conv2d(2, 5, stride=2)], input_shape=(32, 32, 1))
    with pytest.raises(ConfigError, match="14.5 is not a whole number"):
        Sequential([Conv2d(2, 5, stride=2, name="conv3")], input_shape=(32, 32, 1), strict=True)


def test_unbuilt_model_and_bad_input_shape():
    with pytest.raises(ShapeError, match="the model is not built"):
        Sequential([ReLU()]).summary()
    with pytest.raises(ShapeError, match="input_shape must be positive sizes"):
        Sequential([ReLU()], input_shape=(0, 4, 3))
    with pytest.raises(ConfigError, match="layer 1 must be a cnnkit Layer; received str"):
        Sequential([ReLU(), "relu"])


def test_dense_needs_a_flat_input():
    with pytest.raises(ShapeError, match=r"dense_1: expects a flat vector per sample; received input shape "
                                         r"\(4, 4, 3\); put Flatten\(\) or a global pooling layer before it"):
        Sequential([Dense(3)], input_shape=(4, 4, 3))


def test_layer_config_round_trip_and_repr():
    conv = Conv2d(8, 5, stride=2, padding="same", name="c")
    assert Conv2d.from_config(conv.get_config()).get_config() == conv.get_config()
    assert repr(conv) == "Conv2d(filters=8, kernel_size=5, stride=2, padding='same', name='c')"


def test_fresh_gradients_are_adopted_and_others_copied():
    from cnnkit import Parameter
    param = Parameter(np.zeros(3, np.float32))
    fresh = np.ones(3, np.float32)
    param.accumulate(fresh, fresh=True)
    assert param.grad is fresh
    param.accumulate(np.ones(3, np.float32))
    assert (fresh == 2).all()
    other = Parameter(np.zeros(3, np.float32))
    held = np.ones(3, np.float32)
    other.accumulate(held)
    other.accumulate(held)
    assert (held == 1).all() and (other.grad == 2).all()
    wide = Parameter(np.zeros(3, np.float32))
    wide.accumulate(np.ones(3), fresh=True)          # another dtype is converted, never adopted
    assert wide.grad.dtype == np.float32
