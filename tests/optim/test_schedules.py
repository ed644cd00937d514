"""Learning-rate schedules against torch.optim.lr_scheduler's lr sequences."""

import numpy as np
import pytest

try:  # PyTorch is a test-only oracle: without it the tests marked `torch` skip, the rest run
    import torch
except ImportError:
    torch = None

from cnnkit.errors import ConfigError
from cnnkit.optim import SGD, Adam, CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau, StepLR
from cnnkit.parameter import Parameter

STEPS = 30


def torch_sgd(lr, momentum=0.0):
    return torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr, momentum=momentum)


def lr_sequence(opt, schedule, steps=STEPS, read=lambda o: o.lr):
    lrs = [read(opt)]
    for _ in range(steps):
        if isinstance(opt, torch.optim.Optimizer):
            opt.step()  # torch warns when a scheduler steps before its optimizer
        schedule.step()
        lrs.append(read(opt))
    return lrs


def torch_lr(opt):
    return opt.param_groups[0]["lr"]


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda o: StepLR(o, step_size=7, gamma=0.5),
         lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5)),
        (lambda o: CosineAnnealingLR(o, t_max=10),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)),
        (lambda o: CosineAnnealingLR(o, t_max=12, eta_min=0.01),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.01)),
        (lambda o: OneCycleLR(o, max_lr=1.0, total_steps=STEPS),
         lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=STEPS)),
        (lambda o: OneCycleLR(o, max_lr=0.5, total_steps=STEPS + 5, pct_start=0.25, anneal="linear",
                              div_factor=10.0, final_div_factor=100.0),
         lambda o: torch.optim.lr_scheduler.OneCycleLR(
             o, max_lr=0.5, total_steps=STEPS + 5, pct_start=0.25, anneal_strategy="linear",
             div_factor=10.0, final_div_factor=100.0)),
    ],
    ids=["step", "cosine", "cosine-eta-min", "onecycle-cos", "onecycle-linear"],
)
@pytest.mark.torch
def test_lr_sequence_matches_torch(ours, theirs):
    opt, reference = SGD(lr=0.2, momentum=0.9), torch_sgd(0.2, momentum=0.9)
    got = lr_sequence(opt, ours(opt))
    want = lr_sequence(reference, theirs(reference), read=torch_lr)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("opt_factory, key", [(lambda: SGD(lr=0.1, momentum=0.9), "momentum"),
                                             (lambda: Adam(lr=0.1), "betas")])
@pytest.mark.torch
def test_onecycle_cycles_momentum_like_torch(opt_factory, key):
    opt = opt_factory()
    if key == "momentum":
        reference = torch_sgd(0.1, momentum=0.9)
    else:
        reference = torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=0.1)
    ours = OneCycleLR(opt, max_lr=1.0, total_steps=20)
    theirs = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=1.0, total_steps=20)

    def torch_momentum(o):
        value = o.param_groups[0][key]
        return value[0] if key == "betas" else value

    got = [opt.momentum] + [ours.step() or opt.momentum for _ in range(20)]
    want = [torch_momentum(reference)]
    for _ in range(20):
        reference.step()
        theirs.step()
        want.append(torch_momentum(reference))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_onecycle_past_total_steps_raises():
    schedule = OneCycleLR(SGD(lr=0.1), max_lr=1.0, total_steps=3, cycle_momentum=False)
    for _ in range(3):
        schedule.step()
    with pytest.raises(ConfigError, match=r"stepped 4 times but total_steps=3"):
        schedule.step()


def test_onecycle_zero_length_warmup_starts_at_max_lr():
    opt = SGD(lr=0.1)
    OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.1, cycle_momentum=False)
    assert opt.lr == 1.0


@pytest.mark.parametrize("kwargs", [
    {},
    {"mode": "max", "factor": 0.5, "patience": 2},
    {"factor": 0.5, "patience": 1, "threshold": 0.05, "threshold_mode": "abs", "cooldown": 2},
    {"factor": 0.3, "patience": 0, "min_lr": 0.01},
])
@pytest.mark.torch
def test_reduce_on_plateau_matches_torch(kwargs):
    metrics = [1.0, 0.9, 0.9, 0.95, 0.91, 0.89, 0.89, 0.9, 0.92, 0.7] * 3
    if kwargs.get("mode") == "max":
        metrics = [-m for m in metrics]
    opt, reference = SGD(lr=0.1), torch_sgd(0.1)
    ours = ReduceLROnPlateau(opt, **kwargs)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(reference, **kwargs)
    got, want = [], []
    for metric in metrics:
        ours.step(metric)
        theirs.step(metric)
        got.append(opt.lr)
        want.append(torch_lr(reference))
    assert len(set(got)) > 1, "the metrics must trigger at least one reduction"
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("make", [
    lambda o: StepLR(o, step_size=4, gamma=0.5),
    lambda o: CosineAnnealingLR(o, t_max=9, eta_min=0.001),
    lambda o: OneCycleLR(o, max_lr=1.0, total_steps=20),
])
@pytest.mark.torch
def test_schedule_state_round_trip_continues_the_curve(make):
    opt = SGD(lr=0.1, momentum=0.9)
    schedule = make(opt)
    for _ in range(6):
        schedule.step()
    saved = schedule.state_dict()
    rest = lr_sequence(opt, schedule, steps=5)

    fresh_opt = SGD(lr=0.1, momentum=0.9)
    fresh = make(fresh_opt)
    fresh.load_state_dict(saved)
    assert lr_sequence(fresh_opt, fresh, steps=5) == rest


def test_reduce_on_plateau_state_round_trip():
    opt = SGD(lr=0.1)
    schedule = ReduceLROnPlateau(opt, patience=1)
    for metric in [1.0, 0.5, 0.6]:
        schedule.step(metric)
    fresh = ReduceLROnPlateau(SGD(lr=0.1), patience=1)
    fresh.load_state_dict(schedule.state_dict())
    schedule.step(0.7)
    fresh.step(0.7)
    assert opt.lr == pytest.approx(0.01) and fresh.opt.lr == pytest.approx(0.01)


def test_schedule_moves_groups_by_their_ratio():
    params = {"backbone.w": Parameter(np.zeros(2)), "head.w": Parameter(np.zeros(2))}
    opt = SGD(lr=0.1, params=params, groups=[{"params": "backbone", "lr": 0.01}])
    schedule = StepLR(opt, step_size=1, gamma=0.5)
    schedule.step()
    assert opt.group_hyper()["lr"] == pytest.approx(0.05)
    assert opt.group_hyper(0)["lr"] == pytest.approx(0.005)


@pytest.mark.parametrize("make, message", [
    (lambda o: StepLR(o, step_size=0), "StepLR: invalid value for argument `step_size`. "
     "Expected an integer >= 1. Received: step_size=0."),
    (lambda o: CosineAnnealingLR(o, t_max=2.5), "Received: t_max=2.5."),
    (lambda o: OneCycleLR(o, max_lr=1.0, total_steps=10, anneal="cosine"),
     "`anneal`. Expected one of 'cos', 'linear'. Received: anneal='cosine'."),
    (lambda o: OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=1.5),
     "Expected a number in [0, 1]. Received: pct_start=1.5."),
    (lambda o: ReduceLROnPlateau(o, factor=1.0),
     "Expected a number in [0, 1). Received: factor=1.0."),
    (lambda o: ReduceLROnPlateau(o, mode="minimum"), "Received: mode='minimum'."),
    (lambda o: StepLR(object(), step_size=3), "Expected a cnnkit optimizer"),
])
def test_schedule_validation_messages(make, message):
    with pytest.raises(ConfigError) as info:
        make(SGD(lr=0.1))
    assert message in str(info.value)


def test_reduce_on_plateau_rejects_a_non_number_metric():
    with pytest.raises(ConfigError, match=r"Received: metric='loss'"):
        ReduceLROnPlateau(SGD(lr=0.1)).step("loss")
