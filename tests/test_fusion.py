"""A convolution and the ReLU after it, fused by the executor: the same numbers, one pass less."""

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.executor import run_forward
from cnnkit.layers import Conv2d, Dense, Flatten, MaxPool2d, ReLU


def _model(seed=0):
    # Winograd (3x3, 16 channels, enough tiles) and GEMM (stride 2) convolutions, each before a ReLU
    return cnnkit.Sequential([
        Conv2d(16, 3, padding=1, algorithm="winograd4"), ReLU(), Conv2d(16, 3, padding=1), ReLU(),
        Conv2d(8, 3, stride=2, padding=1), ReLU(), MaxPool2d(2), Flatten(), Dense(5), ReLU(), Dense(3),
    ], input_shape=(12, 12, 3), seed=seed)


def _count_relu_passes(monkeypatch) -> list:
    passes = []
    original = ReLU._apply
    monkeypatch.setattr(ReLU, "_apply", lambda self, x, out: passes.append(self.name) or original(self, x, out))
    return passes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_pairs_give_what_the_layers_give_one_at_a_time(dtype, monkeypatch):
    fused, single = _model(), _model()
    single.load_state_dict(fused.state_dict())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 12, 12, 3)).astype(dtype)
    passes = _count_relu_passes(monkeypatch)
    y = fused.forward(x, training=True)
    assert passes == ["relu_4"]   # only the ReLU after a Dense ran as a pass of its own
    expected = x
    for layer in single.layers:
        expected = layer.forward(expected, training=True)
    assert np.array_equal(y, expected)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx_fused = fused.backward(dy.copy())
    dx_single = dy.copy()
    for layer in reversed(single.layers):
        dx_single = layer.backward(dx_single)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dx_fused, dx_single, rtol=tolerance, atol=tolerance)
    for (name, ours), theirs in zip(fused.parameters().items(), single.parameters().values()):
        np.testing.assert_allclose(ours.grad, theirs.grad, rtol=tolerance, atol=tolerance, err_msg=name)


@pytest.mark.parametrize("algorithm", ["winograd4", "gemm"])
def test_fused_pairs_pass_the_gradient_check(algorithm):
    model = cnnkit.Sequential([Conv2d(4, 3, padding=1, algorithm=algorithm), ReLU(),
                               Conv2d(3, 3, algorithm=algorithm), ReLU(), Flatten(), Dense(3)],
                              input_shape=(6, 6, 2), seed=2)
    result = cnnkit.gradcheck(model, np.random.default_rng(3).standard_normal((2, 6, 6, 2)))
    assert result.passed(1e-6), result.errors


def test_features_of_a_convolution_are_taken_before_its_relu():
    model = _model()
    x = np.random.default_rng(4).standard_normal((2, 12, 12, 3)).astype(np.float32)
    conv = model.features(x, "conv2d_2")
    assert (conv < 0).any()
    np.testing.assert_array_equal(model.features(x, "relu_2"), np.maximum(conv, 0))


def test_only_a_pair_in_the_same_mode_is_fused(monkeypatch):
    model = _model()
    x = np.random.default_rng(5).standard_normal((2, 12, 12, 3)).astype(np.float32)
    passes = _count_relu_passes(monkeypatch)
    # the first convolution in inference mode, the rest in training mode
    y, = run_forward(model.plan, [x], model.plan.outputs, frozenset(range(1, len(model.layers))))
    assert passes == ["relu_1", "relu_4"]
    np.testing.assert_allclose(y, model.forward(x), rtol=1e-6)


def test_a_convolution_with_its_own_relu_leaves_the_relu_layer_after_it_to_run(monkeypatch):
    model = cnnkit.Sequential([Conv2d(4, 3, activation="relu"), ReLU()], input_shape=(6, 6, 2))
    passes = _count_relu_passes(monkeypatch)
    y = model.forward(np.random.default_rng(6).standard_normal((1, 6, 6, 2)))
    assert passes == ["relu_1"] and (y >= 0).all()


def test_a_layer_that_cannot_fuse_says_so():
    dense = Dense(3, name="fc")
    dense.build((4,))
    with pytest.raises(ConfigError, match="fc: cannot fuse activation 'relu'"):
        dense.call(np.zeros((1, 4)), False, activation="relu")
