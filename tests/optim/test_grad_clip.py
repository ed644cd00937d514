"""clip_grad_norm against torch.nn.utils.clip_grad_norm_, and the optimizers' clip_norm option."""

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
except ImportError:
    torch = None

from cnnkit.errors import ConfigError
from cnnkit.optim import SGD, clip_grad_norm
from cnnkit.parameter import Parameter


def grads_pair(scale, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    params = {f"p{i}": Parameter(np.zeros(s)) for i, s in enumerate(shapes)}
    tensors = []
    for param in params.values():
        param.accumulate(scale * rng.standard_normal(param.shape))
        tensor = torch.zeros(param.shape, dtype=torch.float64, requires_grad=True)
        tensor.grad = torch.from_numpy(param.grad.copy())
        tensors.append(tensor)
    return params, tensors


@pytest.mark.torch
@pytest.mark.parametrize("scale, max_norm", [(1.0, 0.5), (1.0, 100.0), (0.0, 1.0)])
def test_clip_matches_torch(scale, max_norm):
    params, tensors = grads_pair(scale)
    norm = clip_grad_norm(params, max_norm)
    want = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    assert norm == pytest.approx(float(want), rel=1e-12)
    for param, tensor in zip(params.values(), tensors):
        np.testing.assert_allclose(param.grad, tensor.grad.numpy(), rtol=1e-12, atol=0)


def test_clip_accepts_an_iterable_and_skips_frozen_and_gradless():
    frozen = Parameter(np.zeros(2), trainable=False)
    frozen.accumulate(np.full(2, 100.0))
    live = Parameter(np.zeros(2))
    live.accumulate(np.array([3.0, 4.0]))
    norm = clip_grad_norm([frozen, live, Parameter(np.zeros(3))], 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(live.grad, [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(frozen.grad, 100.0)


@pytest.mark.torch
def test_optimizer_clip_norm_option_equals_clip_then_step():
    first, _ = grads_pair(3.0)
    second, _ = grads_pair(3.0)
    SGD(lr=0.1, momentum=0.9, clip_norm=1.0, params=first).step()
    clip_grad_norm(second, 1.0)
    SGD(lr=0.1, momentum=0.9, params=second).step()
    for name in first:
        np.testing.assert_allclose(first[name].value, second[name].value, rtol=0, atol=1e-15)
        assert np.linalg.norm(first[name].value) > 0


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("inf"), "1"])
def test_clip_rejects_bad_max_norm(max_norm):
    with pytest.raises(ConfigError, match=r"clip_grad_norm: invalid value for argument `max_norm`. "
                                          r"Expected a finite number > 0. Received: max_norm="):
        clip_grad_norm({}, max_norm)
