"""The gradient checker itself: it must pass a right backward and catch a wrong one."""

import numpy as np

import cnnkit
from cnnkit.layers import Layer
from cnnkit.parameter import Parameter


class _Scale(Layer):
    """``y = x * w + b`` per channel; ``bug`` picks a deliberate mistake in the backward."""

    def __init__(self, bug: str = "none", name: str | None = None):
        super().__init__(name)
        self.bug = bug

    def _build(self, input_shape, rng):
        c = input_shape[-1]
        self._params = {"w": Parameter(rng.uniform(0.5, 2.0, c).astype(np.float32)),
                        "b": Parameter(rng.standard_normal(c).astype(np.float32))}
        return input_shape

    def forward(self, x, training=False):
        self.check_input(x)
        self._cache = x if training else None
        return x * self._params["w"].value + self._params["b"].value

    def backward(self, dy):
        x = self.take_cache()
        w, b = self._params["w"], self._params["b"]
        rows = dy.reshape(-1, dy.shape[-1])
        dw = (rows * x.reshape(rows.shape)).sum(0)
        db = rows.sum(0)
        dx = dy * w.value
        if self.bug == "input":
            dx = dy * w.value * 1.01  # off by one percent
        if self.bug == "weight":
            dw = dw + 1e-3 * np.abs(dw).max()
        if self.bug == "bias":
            db = db[::-1].copy()
        w.accumulate(dw)
        b.accumulate(db)
        return dx


def _check(bug):
    layer = _Scale(bug)
    layer.build((3, 4), np.random.default_rng(0))
    return cnnkit.gradcheck(layer, np.random.default_rng(1).standard_normal((2, 3, 4)))


def test_a_right_backward_passes():
    result = _check("none")
    assert result.passed() and result.max_error < 1e-8
    assert set(result.errors) == {"input", "w", "b"}


def test_each_wrong_gradient_is_caught_and_named():
    for bug, name in (("input", "input"), ("weight", "w"), ("bias", "b")):
        result = _check(bug)
        assert not result.passed(), bug
        assert result.worst == name
        assert result.errors[name] > 1e-4


def test_parameters_are_restored_after_the_check():
    layer = _Scale()
    layer.build((3,), np.random.default_rng(0))
    before = {k: p.value.copy() for k, p in layer.parameters().items()}
    cnnkit.gradcheck(layer, np.ones((2, 3)))
    for key, param in layer.parameters().items():
        assert param.value.dtype == np.float32 and param.grad is None
        np.testing.assert_array_equal(param.value, before[key])
