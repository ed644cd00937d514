"""SGD, Adam and AdamW against torch.optim on identical parameters and gradients."""

import numpy as np
import pytest

from cnnkit.optim import SGD, Adam, AdamW
from cnnkit.parameter import Parameter

torch = pytest.importorskip("torch", reason="PyTorch, the test-only oracle, is not installed: pip install torch==2.13.0")

SHAPES = {"conv1.weight": (3, 3, 2, 4), "conv1.bias": (4,), "fc.weight": (5, 3)}

CASES = [
    (SGD, torch.optim.SGD, {"lr": 0.1}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (SGD, torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.05}),
    (SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
    (Adam, torch.optim.Adam, {"lr": 0.01}),
    (Adam, torch.optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    (AdamW, torch.optim.AdamW, {"lr": 0.01}),
    (AdamW, torch.optim.AdamW, {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.3}),
]


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {n: Parameter(rng.standard_normal(s).astype(dtype)) for n, s in SHAPES.items()}


def quadratic_grad(value, target):
    """Gradient of sum(c * (p - t)^2 / 2) with unequal curvature, so state matters."""
    curvature = np.linspace(0.5, 3.0, value.size).reshape(value.shape).astype(value.dtype)
    return curvature * (value - target)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ours_cls, torch_cls, kwargs", CASES)
def test_matches_torch_every_step(ours_cls, torch_cls, kwargs, dtype):
    ours = make_params(dtype)
    targets = {n: np.full(p.shape, 0.3, dtype=dtype) for n, p in ours.items()}
    theirs = {n: torch.tensor(p.value.copy(), requires_grad=True) for n, p in ours.items()}
    opt = ours_cls(params=ours, **kwargs)
    torch_opt = torch_cls(list(theirs.values()), **kwargs)
    for _ in range(5):
        for name, param in ours.items():
            param.zero_grad()
            param.accumulate(quadratic_grad(param.value, targets[name]))
            tensor = theirs[name]
            tensor.grad = torch.from_numpy(quadratic_grad(tensor.detach().numpy(), targets[name]))
        opt.step()
        torch_opt.step()
        for name, param in ours.items():
            assert param.value.dtype == dtype
            np.testing.assert_allclose(param.value, theirs[name].detach().numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ours_cls", [SGD, Adam, AdamW])
def test_updates_value_in_place(ours_cls):
    params = make_params(np.float32)
    held = {n: p.value for n, p in params.items()}
    before = {n: v.copy() for n, v in held.items()}
    opt = ours_cls(lr=0.1, params=params)
    for p in params.values():
        p.accumulate(np.ones(p.shape, dtype=np.float32))
    opt.step()
    for name, p in params.items():
        assert p.value is held[name]
        assert not np.array_equal(held[name], before[name])


def test_float64_gradient_keeps_float32_parameter():
    param = Parameter(np.ones(3, dtype=np.float32))
    param.grad = np.ones(3, dtype=np.float64)
    opt = SGD(lr=0.5, momentum=0.9, weight_decay=0.1, params={"w": param})
    opt.step()
    assert param.value.dtype == np.float32
    np.testing.assert_allclose(param.value, 1 - 0.5 * 1.1)
    assert opt.state_dict()["w.momentum_buffer"].dtype == np.float32


def test_frozen_and_gradless_parameters_are_untouched():
    params = make_params(np.float64)
    params["conv1.weight"].trainable = False
    before = {n: p.value.copy() for n, p in params.items()}
    params["conv1.weight"].accumulate(np.ones(SHAPES["conv1.weight"]))
    params["fc.weight"].accumulate(np.ones(SHAPES["fc.weight"]))  # conv1.bias: grad None
    opt = Adam(lr=0.1, params=params)
    opt.step()
    np.testing.assert_array_equal(params["conv1.weight"].value, before["conv1.weight"])
    np.testing.assert_array_equal(params["conv1.bias"].value, before["conv1.bias"])
    assert not np.allclose(params["fc.weight"].value, before["fc.weight"])
    assert set(k.rpartition(".")[0] for k in opt.state_dict() if k != "lr") == {"fc.weight"}


def test_zero_grad_clears_every_bound_gradient():
    params = make_params(np.float64)
    for p in params.values():
        p.accumulate(np.ones(p.shape))
    SGD(lr=0.1, params=params).zero_grad()
    assert all(p.grad is None for p in params.values())


def test_bind_later_keras_style_and_rebind_keeps_state():
    params = make_params(np.float64)
    opt = SGD(lr=0.1, momentum=0.9)
    opt.bind(params)
    params["fc.weight"].accumulate(np.ones(SHAPES["fc.weight"]))
    opt.step()
    opt.bind(dict(params))
    np.testing.assert_array_equal(opt.state_dict()["fc.weight.momentum_buffer"], 1.0)
