"""SGD (momentum, Nesterov, L2 weight decay), Adam and AdamW, with torch.optim's update rules.

Every update works in place on the parameter's array, through ``Parameter.writing`` (training
loops may hold ``param.value``, a read-only view of it), and in the parameter's dtype. Shared
machinery (binding, groups, clipping, state dicts) is in :mod:`cnnkit.optim.base`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnnkit.errors import ConfigError
from cnnkit.optim._checks import check_betas, check_real
from cnnkit.optim.base import GroupSpec, Optimizer, arg_name
from cnnkit.parameter import Parameter


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 decay.

    Per step, with ``g`` the gradient (torch.optim.SGD with dampening 0)::

        g = g + weight_decay * p
        b = g                      (first step)      b = momentum * b + g   (later steps)
        g = g + momentum * b       (nesterov)        g = b                  (otherwise)
        p = p - lr * g

    Args:
        lr: learning rate, >= 0.
        momentum: momentum factor in [0, 1); 0 turns momentum off.
        nesterov: use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient, >= 0.
        params: ``model.parameters()`` to bind now; otherwise call :meth:`bind` later.
        groups: parameter groups, ``[{"params": "fc8" | ["a.weight", ...], "lr": ..., ...}]``
            overriding any hyper-parameter above; a group's ``lr`` keeps its ratio to
            ``opt.lr`` (see :mod:`cnnkit.optim.base`). A string is a plain name prefix
            (``"conv1"`` also matches ``conv10.weight``; write ``"conv1."`` to stop at the dot).
        clip_norm: if set, clip the global gradient norm to this value before each step.
    """

    slots = ("momentum_buffer",)

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        params: Mapping[str, Parameter] | None = None,
        groups: Sequence[GroupSpec] | None = None,
        clip_norm: float | None = None,
    ):
        defaults = {"momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
        super().__init__(lr, defaults, params, groups, clip_norm)

    def _check_hyper(self, hyper: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        owner = "SGD"
        momentum = check_real(owner, arg_name(prefix, "momentum"), hyper["momentum"], high=1.0)
        weight_decay = check_real(owner, arg_name(prefix, "weight_decay"), hyper["weight_decay"])
        nesterov = hyper["nesterov"]
        if not isinstance(nesterov, bool):
            raise ConfigError(
                f"SGD: invalid value for argument `{arg_name(prefix, 'nesterov')}`. Expected "
                f"True or False. Received: nesterov={nesterov!r}."
            )
        if nesterov and momentum == 0.0:
            raise ConfigError(
                f"SGD: `{arg_name(prefix, 'nesterov')}`=True needs momentum > 0. Received: "
                f"momentum={momentum!r}. Set momentum (e.g. 0.9) or nesterov=False."
            )
        return {"momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}

    @property
    def momentum(self) -> float:
        """The default group's momentum; setting it sets every group's (OneCycleLR does)."""
        return self._defaults["momentum"]

    @momentum.setter
    def momentum(self, value: float) -> None:
        hypers = [self._defaults, *(g["hyper"] for g in self._groups)]
        checked = [self._check_hyper({**h, "momentum": value}, prefix="") for h in hypers]
        for hyper, new in zip(hypers, checked):
            hyper.update(new)

    def _update(self, value: np.ndarray, grad: np.ndarray, state: dict[str, Any],
                hyper: Mapping[str, Any]) -> None:
        if hyper["weight_decay"]:
            grad = grad + value.dtype.type(hyper["weight_decay"]) * value
        momentum = hyper["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, dtype=value.dtype, copy=True)
            else:
                buf *= value.dtype.type(momentum)
                buf += grad
            grad = grad + value.dtype.type(momentum) * buf if hyper["nesterov"] else buf
        value -= value.dtype.type(hyper["lr"]) * grad


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay added to the gradient (torch.optim.Adam).

    Per step ``t`` (from 1)::

        g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g          v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Args:
        lr: learning rate, >= 0.
        betas: decay rates ``(beta1, beta2)`` of the first and second moments, each in [0, 1).
        eps: added to the denominator for numerical stability, >= 0.
        weight_decay: L2 penalty added to the gradient, >= 0.
        params, groups, clip_norm: as for :class:`SGD`.
    """

    slots = ("exp_avg", "exp_avg_sq", "step")
    _decoupled = False

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        params: Mapping[str, Parameter] | None = None,
        groups: Sequence[GroupSpec] | None = None,
        clip_norm: float | None = None,
    ):
        defaults = {"betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(lr, defaults, params, groups, clip_norm)

    def _check_hyper(self, hyper: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        owner = type(self).__name__
        return {
            "betas": check_betas(owner, arg_name(prefix, "betas"), hyper["betas"]),
            "eps": check_real(owner, arg_name(prefix, "eps"), hyper["eps"]),
            "weight_decay": check_real(
                owner, arg_name(prefix, "weight_decay"), hyper["weight_decay"]
            ),
        }

    @property
    def momentum(self) -> float:
        """``beta1`` of the default group; setting it sets every group's (OneCycleLR does)."""
        return self._defaults["betas"][0]

    @momentum.setter
    def momentum(self, value: float) -> None:
        hypers = [self._defaults, *(g["hyper"] for g in self._groups)]
        owner = type(self).__name__
        checked = [check_betas(owner, "betas", (value, h["betas"][1])) for h in hypers]
        for hyper, betas in zip(hypers, checked):
            hyper["betas"] = betas

    def _update(self, value: np.ndarray, grad: np.ndarray, state: dict[str, Any],
                hyper: Mapping[str, Any]) -> None:
        dtype = value.dtype.type
        lr, weight_decay = hyper["lr"], hyper["weight_decay"]
        beta1, beta2 = hyper["betas"]
        if weight_decay and self._decoupled:
            value *= dtype(1.0 - lr * weight_decay)
        elif weight_decay:
            grad = grad + dtype(weight_decay) * value
        if "step" not in state:
            state.update(step=0, exp_avg=np.zeros_like(value), exp_avg_sq=np.zeros_like(value))
        state["step"] += 1
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        exp_avg *= dtype(beta1)
        exp_avg += dtype(1.0 - beta1) * grad
        exp_avg_sq *= dtype(beta2)
        exp_avg_sq += dtype(1.0 - beta2) * np.square(grad)
        # one scratch array holds the denominator, then the whole update
        update = np.sqrt(exp_avg_sq)
        update /= dtype(math.sqrt(1.0 - beta2**step))
        update += dtype(hyper["eps"])
        np.divide(exp_avg, update, out=update)
        update *= dtype(lr / (1.0 - beta1**step))
        value -= update


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): ``p = p * (1 - lr * wd)`` first.

    Args are those of :class:`Adam`; ``weight_decay`` defaults to 1e-2.
    """

    _decoupled = True

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        params: Mapping[str, Parameter] | None = None,
        groups: Sequence[GroupSpec] | None = None,
        clip_norm: float | None = None,
    ):
        super().__init__(lr, betas, eps, weight_decay, params, groups, clip_norm)
