"""Learning-rate schedules with the lr sequences of ``torch.optim.lr_scheduler``.

A schedule drives ``opt.lr``, the base learning rate; parameter groups follow by their ratio
(see :mod:`cnnkit.optim.base`). Like torch, constructing a schedule sets the lr of step 0, and
each ``step()`` (once per epoch, or per batch for OneCycleLR) moves to the next one. The
closed-form schedules compute the lr from the step count and the lr at construction, so
``load_state_dict`` puts the optimizer back on the curve by itself; they do not chain with a
second schedule on the same optimizer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import math
from numbers import Real
from typing import Any

from cnnkit.errors import ConfigError
from cnnkit.optim._checks import check_choice, check_int, check_real
from cnnkit.optim.base import Optimizer


class Schedule(ABC):
    """Base of the closed-form schedules: ``lr = self.lr_at(last_step)``."""

    def __init__(self, opt: Optimizer):
        if not isinstance(opt, Optimizer):
            raise ConfigError(
                f"{type(self).__name__}: invalid value for argument `opt`. Expected a cnnkit "
                f"optimizer (SGD, Adam, AdamW). Received: {type(opt).__name__}."
            )
        self.opt = opt
        self.base_lr = opt.lr
        self.last_step = 0
        self._apply()

    @abstractmethod
    def lr_at(self, step: int) -> float:
        """The base learning rate after ``step`` calls to :meth:`step`."""

    def _apply(self) -> None:
        self.opt.lr = self.lr_at(self.last_step)

    def step(self) -> None:
        """Advance one step and set the optimizer's lr."""
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """``{"last_step": int, "base_lr": float}``: plain numbers, JSON-ready."""
        return {"last_step": self.last_step, "base_lr": self.base_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output and set the optimizer's lr to match."""
        self.last_step = check_int(type(self).__name__, "last_step", int(state["last_step"]), low=0)
        self.base_lr = check_real(type(self).__name__, "base_lr", float(state["base_lr"]))
        self._apply()


class StepLR(Schedule):
    """Multiply the lr by ``gamma`` every ``step_size`` steps: ``lr0 * gamma**(t // step_size)``."""

    def __init__(self, opt: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = check_int("StepLR", "step_size", step_size)
        self.gamma = check_real("StepLR", "gamma", gamma)
        super().__init__(opt)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineAnnealingLR(Schedule):
    """Cosine from the initial lr down to ``eta_min`` over ``t_max`` steps, then back up.

    ``lr = eta_min + (lr0 - eta_min) * (1 + cos(pi * t / t_max)) / 2`` (periodic past ``t_max``,
    as torch's).
    """

    def __init__(self, opt: Optimizer, t_max: int, eta_min: float = 0.0):
        self.t_max = check_int("CosineAnnealingLR", "t_max", t_max)
        self.eta_min = check_real("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(opt)

    def lr_at(self, step: int) -> float:
        cosine = (1.0 + math.cos(math.pi * step / self.t_max)) / 2.0
        return self.eta_min + (self.base_lr - self.eta_min) * cosine


class OneCycleLR(Schedule):
    """The 1cycle policy: warm up from ``max_lr / div_factor`` to ``max_lr``, then anneal down
    to ``max_lr / div_factor / final_div_factor``; step it once per batch.

    Phase 1 ends at step ``pct_start * total_steps - 1``, phase 2 at ``total_steps - 1``.
    With ``cycle_momentum`` (torch's default) the optimizer's momentum (SGD) or beta1 (Adam)
    runs the other way, from ``max_momentum`` to ``base_momentum`` and back, on every group.
    ``max_lr`` is the base lr's peak; groups keep their ratio to it (torch gives every group
    the same ``max_lr`` when it is a number). A zero-length phase jumps straight to its end.
    """

    def __init__(
        self,
        opt: Optimizer,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.3,
        anneal: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ):
        owner = "OneCycleLR"
        self.max_lr = check_real(owner, "max_lr", max_lr)
        self.total_steps = check_int(owner, "total_steps", total_steps)
        self.pct_start = check_real(owner, "pct_start", pct_start, high=1.0, include_high=True)
        self.anneal = check_choice(owner, "anneal", anneal, ("cos", "linear"))
        self.div_factor = check_real(owner, "div_factor", div_factor, strict_low=True)
        self.final_div_factor = check_real(
            owner, "final_div_factor", final_div_factor, strict_low=True
        )
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = check_real(owner, "base_momentum", base_momentum, high=1.0)
        self.max_momentum = check_real(owner, "max_momentum", max_momentum, high=1.0)
        initial = self.max_lr / self.div_factor
        warmup_end = self.pct_start * self.total_steps - 1.0
        # (end step, start lr, end lr, start momentum, end momentum)
        self._phases = (
            (warmup_end, initial, self.max_lr, self.max_momentum, self.base_momentum),
            (self.total_steps - 1.0, self.max_lr, initial / self.final_div_factor,
             self.base_momentum, self.max_momentum),
        )
        super().__init__(opt)

    def _interpolate(self, start: float, end: float, pct: float) -> float:
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
        return (end - start) * pct + start

    def _position(self, step: int) -> tuple[tuple[float, ...], float]:
        """The phase ``step`` falls in and how far through it (0..1, past 1 at the last step)."""
        start = 0.0
        for index, phase in enumerate(self._phases):
            end = phase[0]
            if step <= end or index == len(self._phases) - 1:
                return phase, (step - start) / (end - start) if end != start else 1.0
            start = end
        raise AssertionError("unreachable: the last phase always matches")

    def lr_at(self, step: int) -> float:
        phase, pct = self._position(step)
        return self._interpolate(phase[1], phase[2], pct)

    def momentum_at(self, step: int) -> float:
        """The momentum (SGD) or beta1 (Adam) the cycle sets after ``step`` steps."""
        phase, pct = self._position(step)
        return self._interpolate(phase[3], phase[4], pct)

    def _apply(self) -> None:
        if self.last_step > self.total_steps:
            raise ConfigError(
                f"OneCycleLR: stepped {self.last_step} times but total_steps={self.total_steps}; "
                "set total_steps to the number of optimizer steps (epochs x batches per epoch)."
            )
        super()._apply()
        if self.cycle_momentum:
            self.opt.momentum = self.momentum_at(self.last_step)


class ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when a metric has not improved for ``patience`` steps.

    ``step(metric)`` once per epoch with the monitored value (e.g. validation loss).
    Improvement means ``metric < best * (1 - threshold)`` in ``mode="min"`` with
    ``threshold_mode="rel"`` (``> best * (1 + threshold)`` in ``"max"``; ``"abs"`` adds or
    subtracts ``threshold`` instead). After a reduction, ``cooldown`` steps pass before
    counting bad steps again. The lr never goes below ``min_lr``, and a reduction smaller
    than ``eps`` is skipped, as in torch.
    """

    def __init__(
        self,
        opt: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        min_lr: float = 0.0,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        eps: float = 1e-8,
    ):
        owner = "ReduceLROnPlateau"
        if not isinstance(opt, Optimizer):
            raise ConfigError(
                f"{owner}: invalid value for argument `opt`. Expected a cnnkit optimizer. "
                f"Received: {type(opt).__name__}."
            )
        self.opt = opt
        self.mode = check_choice(owner, "mode", mode, ("min", "max"))
        self.factor = check_real(owner, "factor", factor, high=1.0)
        self.patience = check_int(owner, "patience", patience, low=0)
        self.threshold = check_real(owner, "threshold", threshold)
        self.min_lr = check_real(owner, "min_lr", min_lr)
        self.threshold_mode = check_choice(owner, "threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = check_int(owner, "cooldown", cooldown, low=0)
        self.eps = check_real(owner, "eps", eps)
        self.last_step = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_steps = 0
        self.cooldown_counter = 0

    def _is_better(self, value: float) -> bool:
        sign = 1.0 if self.mode == "max" else -1.0
        if self.threshold_mode == "rel":
            return sign * value > sign * self.best * (1.0 + sign * self.threshold)
        return sign * value > sign * self.best + self.threshold

    def step(self, metric: float) -> None:
        """Record this step's ``metric`` and reduce the lr if it has stopped improving."""
        if isinstance(metric, bool) or not isinstance(metric, Real):
            raise ConfigError(
                f"ReduceLROnPlateau.step: invalid value for argument `metric`. Expected a "
                f"number (e.g. the validation loss). Received: metric={metric!r}."
            )
        value = float(metric)
        self.last_step += 1
        if self._is_better(value):
            self.best, self.num_bad_steps = value, 0
        else:
            self.num_bad_steps += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_steps = 0  # bad steps during cooldown do not count
        if self.num_bad_steps > self.patience:
            new_lr = max(self.opt.lr * self.factor, self.min_lr)
            if self.opt.lr - new_lr > self.eps:
                self.opt.lr = new_lr
            self.cooldown_counter, self.num_bad_steps = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        """The counters and best value seen, as plain numbers (the lr lives in the optimizer)."""
        return {
            "last_step": self.last_step,
            "best": self.best,
            "num_bad_steps": self.num_bad_steps,
            "cooldown_counter": self.cooldown_counter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.last_step = int(state["last_step"])
        self.best = float(state["best"])
        self.num_bad_steps = int(state["num_bad_steps"])
        self.cooldown_counter = int(state["cooldown_counter"])
