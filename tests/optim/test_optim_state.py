"""Parameter groups, name-keyed state dicts and hyper-parameter validation."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
except ImportError:
    torch = None

from cnnkit.errors import CnnkitError, ConfigError, WeightsError
from cnnkit.optim import SGD, Adam, AdamW
from cnnkit.parameter import Parameter

SHAPES = {"conv1.weight": (3, 3, 1, 2), "conv1.bias": (2,), "conv10.weight": (2, 2), "fc8.bias": (3,)}


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {n: Parameter(rng.standard_normal(s)) for n, s in SHAPES.items()}


def feed(params, step):
    for name, param in params.items():
        param.zero_grad()
        param.accumulate(np.cos(param.value * (step + 1)) + 0.1 * len(name))


# -- groups -------------------------------------------------------------------------------------
@pytest.mark.torch
def test_prefix_group_gets_its_own_hyper_parameters_like_torch_groups():
    ours = make_params()
    theirs = {n: torch.tensor(p.value.copy(), requires_grad=True) for n, p in ours.items()}
    opt = SGD(lr=0.1, momentum=0.9, params=ours,
              groups=[{"params": "conv1.", "lr": 0.01, "weight_decay": 0.1}])
    group = [theirs["conv1.weight"], theirs["conv1.bias"]]
    rest = [theirs["conv10.weight"], theirs["fc8.bias"]]
    reference = torch.optim.SGD([{"params": group, "lr": 0.01, "weight_decay": 0.1}, {"params": rest}],
                                lr=0.1, momentum=0.9)
    assert opt.group_names(0) == ["conv1.weight", "conv1.bias"]
    assert opt.group_names() == ["conv10.weight", "fc8.bias"]
    for step in range(5):
        feed(ours, step)
        for name, tensor in theirs.items():
            tensor.grad = torch.from_numpy(ours[name].grad.copy())
        opt.step()
        reference.step()
        for name, param in ours.items():
            np.testing.assert_allclose(param.value, theirs[name].detach().numpy(), rtol=0, atol=1e-6)


def test_group_by_name_list_and_lr_ratio_follows_base_lr():
    opt = Adam(lr=0.01, params=make_params(), groups=[{"params": ["fc8.bias"], "lr": 0.1, "betas": (0.5, 0.9)}])
    assert opt.group_names(0) == ["fc8.bias"]
    assert opt.group_hyper(0)["betas"] == (0.5, 0.9) and opt.group_hyper()["betas"] == (0.9, 0.999)
    opt.lr = 0.001
    assert opt.group_hyper(0)["lr"] == pytest.approx(0.01)


def test_groups_resolve_at_bind_time():
    opt = SGD(lr=0.1, groups=[{"params": "fc8", "lr": 0.5}])
    opt.bind(make_params())
    assert opt.group_names(0) == ["fc8.bias"]


@pytest.mark.parametrize("groups, message", [
    ([{"params": "conv1"}, {"params": ["conv1.bias"]}],
     "'conv1.bias' matches both groups[0] and groups[1]"),
    ([{"params": "block5"}], "groups[0] prefix 'block5' matches no parameter"),
    ([{"params": ["fc8.bias", "fc9.bias"]}], "groups[0] names ['fc9.bias'] are not parameters"),
])
def test_group_resolution_errors(groups, message):
    with pytest.raises(ConfigError) as info:
        SGD(lr=0.1, groups=groups, params=make_params())
    assert message in str(info.value)
    assert "Parameter names are: conv1.weight" in str(info.value)


@pytest.mark.parametrize("groups, message", [
    ([{"lr": 0.1}], "Expected a dict with a 'params' key"),
    ([{"params": ""}], "Expected a non-empty name prefix"),
    ([{"params": "fc8", "momentum": 0.9}], "groups[0] has unknown keys ['momentum']"),
    ([{"params": "fc8", "lr": -1}], "`groups[0]['lr']`. Expected a finite number >= 0. Received: groups[0]['lr']=-1."),
    ([{"params": "fc8", "eps": -1e-8}], "Received: groups[0]['eps']=-1e-08."),
])
def test_group_spec_errors(groups, message):
    with pytest.raises(ConfigError) as info:
        Adam(lr=0.1, groups=groups)
    assert message in str(info.value)


def test_group_lr_needs_a_nonzero_base_lr():
    with pytest.raises(ConfigError, match=r"groups\[0\] sets lr=0.1 but the optimizer's lr=0"):
        SGD(lr=0.0, groups=[{"params": "fc8", "lr": 0.1}])


# -- state dicts -------------------------------------------------------------------------------
def run(opt_factory, params, steps, start=0):
    opt = opt_factory(params)
    for step in range(start, start + steps):
        feed(params, step)
        opt.step()
    return opt


FACTORIES = {
    "sgd": lambda p: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, params=p),
    "adam": lambda p: Adam(lr=0.01, weight_decay=0.01, params=p),
    "adamw": lambda p: AdamW(lr=0.01, params=p, groups=[{"params": "fc8", "lr": 0.1}]),
}

ROUND_TRIPS = {
    "dict": lambda d: d,
    "safetensors": None,  # filled in the test: needs tmp_path
    "json": lambda d: json.loads(json.dumps({k: np.asarray(v).tolist() for k, v in d.items()})),
}


@pytest.mark.parametrize("kind", FACTORIES)
@pytest.mark.parametrize("via", ROUND_TRIPS)
def test_state_round_trip_continues_identically(kind, via, tmp_path):
    factory = FACTORIES[kind]
    straight = make_params()
    run(factory, straight, 5)

    first = make_params()
    saved = run(factory, first, 3).state_dict()
    if via == "safetensors":
        save_file({k: np.asarray(v) for k, v in saved.items()}, tmp_path / "opt.safetensors")
        saved = load_file(tmp_path / "opt.safetensors")
    else:
        saved = ROUND_TRIPS[via](saved)
    rebuilt = {n: Parameter(p.value.copy()) for n, p in first.items()}  # a model rebuild
    opt = factory(rebuilt)
    opt.load_state_dict(saved)
    for step in range(3, 5):
        feed(rebuilt, step)
        opt.step()
    for name, param in straight.items():
        np.testing.assert_array_equal(rebuilt[name].value, param.value)


def test_state_dict_is_flat_and_name_keyed():
    state = run(FACTORIES["adam"], make_params(), 2).state_dict()
    assert state["lr"] == 0.01
    assert state["fc8.bias.step"] == 2
    assert state["conv1.weight.exp_avg"].shape == SHAPES["conv1.weight"]
    assert set(state) == {"lr"} | {f"{n}.{s}" for n in SHAPES for s in ("exp_avg", "exp_avg_sq", "step")}


def test_load_state_dict_lists_every_mismatch():
    saved = run(FACTORIES["sgd"], make_params(), 1).state_dict()
    saved["conv1.bias.momentum_buffer"] = np.zeros(5)
    saved["fc9.weight.momentum_buffer"] = np.zeros(3)
    saved["fc8.bias.exp_avg"] = np.zeros(3)
    opt = FACTORIES["sgd"](make_params())
    with pytest.raises(WeightsError) as info:
        opt.load_state_dict(saved)
    text = str(info.value)
    assert "3 problem(s)" in text
    assert "'conv1.bias.momentum_buffer': shape (5,), parameter needs (2,)" in text
    assert "'fc9.weight.momentum_buffer': no parameter named 'fc9.weight'" in text
    assert "'fc8.bias.exp_avg': not a SGD entry (slots: momentum_buffer)" in text
    assert isinstance(info.value, CnnkitError)


def test_load_state_dict_reports_incomplete_adam_state():
    saved = run(FACTORIES["adam"], make_params(), 1).state_dict()
    del saved["fc8.bias.exp_avg_sq"]
    with pytest.raises(WeightsError, match=r"'fc8.bias': missing exp_avg_sq"):
        FACTORIES["adam"](make_params()).load_state_dict(saved)


def test_unbound_optimizer_says_how_to_bind():
    with pytest.raises(ConfigError, match=r"SGD.step: no parameters bound; pass params= to the "
                                          r"constructor or call opt.bind\(model.parameters\(\)\) first."):
        SGD(lr=0.1).step()


@pytest.mark.parametrize("bad, message", [
    ([Parameter(np.zeros(2))], "expected a mapping name -> Parameter such as model.parameters(). Received: list."),
    ({"w": np.zeros(2)}, "every entry must map a str name to a Parameter; bad entries: 'w'."),
])
def test_bind_rejects_non_mappings(bad, message):
    with pytest.raises(ConfigError) as info:
        SGD(lr=0.1).bind(bad)
    assert message in str(info.value)


# -- hyper-parameter validation ----------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: SGD(lr=-0.1), "SGD: invalid value for argument `lr`. Expected a finite number >= 0. Received: lr=-0.1."),
    (lambda: SGD(lr=float("nan")), "Received: lr=nan."),
    (lambda: SGD(lr=True), "Received: lr=True."),
    (lambda: SGD(lr=0.1, momentum=-0.5), "`momentum`. Expected a number in [0, 1). Received: momentum=-0.5."),
    (lambda: SGD(lr=0.1, nesterov=True), "SGD: `nesterov`=True needs momentum > 0. Received: momentum=0.0. "
     "Set momentum (e.g. 0.9) or nesterov=False."),
    (lambda: SGD(lr=0.1, weight_decay=-1), "Received: weight_decay=-1."),
    (lambda: SGD(lr=0.1, clip_norm=0), "`clip_norm`. Expected a finite number > 0. Received: clip_norm=0."),
    (lambda: Adam(betas=(0.9, 1.0)), "Adam: invalid value for argument `betas[1]`. Expected a number in [0, 1). "
     "Received: betas[1]=1.0."),
    (lambda: Adam(betas=0.9), "Expected a pair (beta1, beta2), each in [0, 1). Received: betas=0.9."),
    (lambda: Adam(eps=-1.0), "Received: eps=-1.0."),
    (lambda: AdamW(weight_decay=-0.01), "AdamW: invalid value for argument `weight_decay`."),
])
def test_hyper_parameter_messages(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert message in str(info.value)


def test_lr_setter_validates():
    opt = SGD(lr=0.1)
    with pytest.raises(ConfigError, match=r"Received: lr=-1"):
        opt.lr = -1
    assert opt.lr == 0.1
