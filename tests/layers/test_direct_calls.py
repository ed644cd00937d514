"""A layer called directly (``model["relu_1"](x)``) never writes into the caller's arrays (issue 13, section 5).

Each layer is built inside a Sequential between layers that make fresh outputs and fresh input
gradients, the position where the executor lets it work in place, and then called on its own.
"""

import numpy as np
import pytest

import cnnkit
from cnnkit.layers import (AvgPool2d, BatchNorm2d, Conv2d, Conv2dTranspose, Dense, Dropout, Flatten, GlobalAvgPool2d,
                           GlobalMaxPool2d, LeakyReLU, MaxPool2d, Maxout, PReLU, ReLU, Sigmoid, Softmax, Tanh,
                           UpSampling2d)

VOLUME, FLAT = "volume", "flat"
#: (layer, its input kind, its output kind)
LAYERS = [
    (lambda: ReLU(name="it"), VOLUME, VOLUME),
    (lambda: LeakyReLU(0.1, name="it"), VOLUME, VOLUME),
    (lambda: PReLU(name="it"), VOLUME, VOLUME),
    (lambda: Sigmoid(name="it"), VOLUME, VOLUME),
    (lambda: Tanh(name="it"), VOLUME, VOLUME),
    (lambda: Maxout(2, name="it"), VOLUME, VOLUME),
    (lambda: Conv2d(4, 3, padding=1, name="it"), VOLUME, VOLUME),
    (lambda: Conv2d(4, 3, padding=1, activation="relu", name="it"), VOLUME, VOLUME),
    (lambda: Conv2dTranspose(3, 3, stride=2, padding=1, output_padding=1, name="it"), VOLUME, VOLUME),
    (lambda: UpSampling2d(2, "bilinear", name="it"), VOLUME, VOLUME),
    (lambda: BatchNorm2d(name="it"), VOLUME, VOLUME),
    (lambda: MaxPool2d(2, name="it"), VOLUME, VOLUME),
    (lambda: AvgPool2d(3, stride=1, padding=1, name="it"), VOLUME, VOLUME),
    (lambda: Dropout(0.5, seed=0, name="it"), VOLUME, VOLUME),
    (lambda: Flatten(name="it"), VOLUME, FLAT),
    (lambda: GlobalAvgPool2d(name="it"), VOLUME, FLAT),
    (lambda: GlobalMaxPool2d(name="it"), VOLUME, FLAT),
    (lambda: Dense(5, name="it"), FLAT, FLAT),
    (lambda: ReLU(name="it"), FLAT, FLAT),
    (lambda: Softmax(name="it"), FLAT, FLAT),
]
IDS = ["relu", "leaky_relu", "prelu", "sigmoid", "tanh", "maxout", "conv", "conv_relu", "conv_transpose",
       "upsampling", "batch_norm", "max_pool", "avg_pool", "dropout", "flatten", "global_avg", "global_max", "dense",
       "relu_flat", "softmax"]


def _model(make, kind_in, kind_out) -> cnnkit.Sequential:
    before = Conv2d(4, 1, name="before") if kind_in == VOLUME else Dense(6, name="before")
    after = Conv2d(2, 1, name="after") if kind_out == VOLUME else Dense(3, name="after")
    layers = [Flatten(name="flat")] if kind_in == FLAT else []
    return cnnkit.Sequential(layers + [before, make(), after], input_shape=(4, 4, 2))


@pytest.mark.parametrize("make, kind_in, kind_out", LAYERS, ids=IDS)
def test_a_layer_called_directly_leaves_its_input_and_gradient_alone(make, kind_in, kind_out):
    model = _model(make, kind_in, kind_out)
    layer = model["it"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *layer.input_shape)).astype(np.float32)
    x_before = x.copy()
    y = layer(x, training=True)
    np.testing.assert_array_equal(x, x_before)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy_before = dy.copy()
    layer.backward(dy)
    np.testing.assert_array_equal(dy, dy_before)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("make, kind_in, kind_out", LAYERS, ids=IDS)
def test_a_layer_computes_on_read_only_arrays(make, kind_in, kind_out):
    layer = _model(make, kind_in, kind_out)["it"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *layer.input_shape)).astype(np.float32)
    x.flags.writeable = False
    y = layer(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy.flags.writeable = False
    layer.backward(dy)


def test_the_issue_example_relu_called_by_name_keeps_x():
    model = cnnkit.Sequential([Conv2d(4, 3, padding=1), ReLU(), MaxPool2d(2)], input_shape=(6, 6, 1))
    x = np.random.default_rng(2).standard_normal((2, 6, 6, 4)).astype(np.float32)
    before = x.copy()
    model["relu_1"](x)
    np.testing.assert_array_equal(x, before)
