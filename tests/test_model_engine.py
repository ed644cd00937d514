"""Sequential as one differentiable function: gradient checks, prediction, and input errors."""

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ShapeError
from cnnkit.layers import (AvgPool2d, BatchNorm2d, Conv2d, Dense, Flatten, GlobalAvgPool2d, LeakyReLU, MaxPool2d,
                           Maxout, PReLU, ReLU, Sigmoid, Softmax, Tanh)


def test_whole_model_gradient_check_in_float64():
    model = cnnkit.Sequential([
        Conv2d(4, 3, padding=1), BatchNorm2d(), ReLU(), MaxPool2d(2),
        Conv2d(6, 3, stride=2, padding="same"), PReLU(), AvgPool2d(2, padding=1), Conv2d(8, 1), Maxout(2),
        Tanh(), GlobalAvgPool2d(), Dense(5), LeakyReLU(0.1), Dense(3), Sigmoid(), Dense(4), Softmax(),
    ], input_shape=(9, 11, 2), seed=3)
    x = np.random.default_rng(0).standard_normal((3, 9, 11, 2))
    result = cnnkit.gradcheck(model, x)
    assert result.passed(1e-6), result.errors


def test_predict_batches_give_the_same_result_as_one_forward():
    model = cnnkit.models.vgg_small()
    x = np.random.default_rng(0).random((10, 8, 8, 1), dtype=np.float32)
    # the convolution path is chosen per batch size, so rounding may differ slightly
    np.testing.assert_allclose(model.predict(x, batch_size=3), model.forward(x), rtol=1e-5, atol=1e-7)
    assert all(layer._cache is None for layer in model.layers)


def _spy(monkeypatch, cls, method):
    """Record the layers whose ``method`` runs with ``owned=True`` (the executor's in-place hand-overs)."""
    calls = []
    original = getattr(cls, method)

    def spy(self, *args, **kwargs):
        if kwargs.get("owned"):
            calls.append(self.name)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, method, spy)
    return calls


def test_relu_works_in_place_only_on_arrays_nobody_else_holds(monkeypatch):
    model = cnnkit.Sequential([ReLU(), Conv2d(2, 1), Tanh()], input_shape=(2, 2, 1))
    owned = _spy(monkeypatch, Tanh, "call")
    x = -np.ones((1, 2, 2, 1), np.float32)
    model.forward(x)
    assert (x == -1).all()
    assert owned == ["tanh_1"]           # the convolution's fresh output, not the caller's x


def test_relu_overwrites_only_gradients_that_the_layer_after_made_fresh(monkeypatch):
    # relu_1 is fused into the convolution (its backward masks the gradient); relu_2 gets the
    # gradient dense_2 made, relu_3 the caller's
    model = cnnkit.Sequential([Conv2d(2, 1), ReLU(), Flatten(), Dense(4), ReLU(), Dense(3), ReLU()],
                              input_shape=(3, 3, 1))
    owned = _spy(monkeypatch, ReLU, "call_backward")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 3, 1)).astype(np.float32)
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    original = dy.copy()
    model.forward(x, training=True)
    dx = model.backward(dy)
    np.testing.assert_array_equal(dy, original)   # the caller's gradient is never written
    assert owned == ["relu_2"]                   # only the gradient the dense layer after made
    model.zero_grad()
    h = x
    for layer in model.layers:                    # layer by layer: nothing handed over, nothing fused
        h = layer.forward(h, training=True)
    grad = dy
    for layer in reversed(model.layers):
        grad = layer.backward(grad)
    np.testing.assert_array_equal(grad, dx)


def test_wrong_channel_count_names_layer_and_shapes():
    model = cnnkit.models.vgg16(width=1 / 16, input_shape=(32, 32, 3))
    with pytest.raises(ShapeError, match=r"^conv1_1: expected input of shape \(B, 32, 32, 3\); "
                                         r"received \(2, 32, 32, 1\)$"):
        model.forward(np.zeros((2, 32, 32, 1), np.float32))
    with pytest.raises(ShapeError, match=r"expected input of shape \(B, 32, 32, 3\); received \(32, 32, 3\)"):
        model.predict(np.zeros((32, 32, 3), np.float32))


def test_backward_gradient_of_the_wrong_shape_is_a_clear_error():
    model = cnnkit.Sequential([Conv2d(2, 3), Flatten(), Dense(4)], input_shape=(5, 5, 1))
    model.forward(np.zeros((2, 5, 5, 1), np.float32), training=True)
    with pytest.raises(ShapeError, match=r"dense_1: backward expected a gradient of shape \(2, 4\)"):
        model.backward(np.zeros((2, 5), np.float32))


def test_float64_is_kept_end_to_end():
    model = cnnkit.models.vgg_small(batch_norm=True)
    x = np.random.default_rng(0).random((2, 8, 8, 1))
    for param in model.parameters().values():
        param.value = param.value.astype(np.float64)
    out = model.forward(x, training=True)
    assert out.dtype == np.float64
    assert model.backward(np.ones_like(out)).dtype == np.float64
