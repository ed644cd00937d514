"""`Optimizer`: binding to named parameters, parameter groups, clipping and name-keyed state.

Subclasses supply the update rule (:meth:`Optimizer._update`), the names of their
per-parameter state slots and the validation of their hyper-parameters.

Learning rate and groups: ``opt.lr`` is the base (default group's) learning rate, the one
schedules drive. A group that sets its own ``lr`` keeps its *ratio* to the base: with
``SGD(lr=0.1, groups=[{"params": "fc8", "lr": 0.01}])`` the group runs at ``opt.lr / 10``
whatever a schedule does to ``opt.lr``. This is what fine-tuning wants (the backbone stays ten
times slower than the head throughout) and equals torch's per-group schedules for
multiplicative ones (StepLR, CosineAnnealingLR with ``eta_min=0``, ReduceLROnPlateau above
``min_lr``).

Groups are resolved when parameters are bound: a name matching two groups, a prefix matching
nothing, or a listed name that is not a parameter is a ConfigError. Parameters in no group use
the optimizer's defaults. Frozen parameters may sit in a group; ``step`` skips any parameter
that is not trainable or has no gradient at that moment, so unfreezing later just works.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnnkit.errors import ConfigError, WeightsError
from cnnkit.optim._checks import check_real
from cnnkit.optim.clip import clip_grad_norm
from cnnkit.parameter import Parameter

GroupSpec = Mapping[str, Any]


def arg_name(prefix: str, key: str) -> str:
    """The argument name in messages: ``momentum`` or, inside a group, ``groups[1]['momentum']``."""
    return f"{prefix}[{key!r}]" if prefix else key


class Optimizer(ABC):
    """Base class: holds named parameters, groups and per-parameter state; see module doc."""

    #: names of the per-parameter state entries, e.g. ("exp_avg", "exp_avg_sq", "step")
    slots: tuple[str, ...] = ()

    def __init__(
        self,
        lr: float,
        defaults: dict[str, Any],
        params: Mapping[str, Parameter] | None,
        groups: Sequence[GroupSpec] | None,
        clip_norm: float | None,
    ):
        name = type(self).__name__
        self._lr = check_real(name, "lr", lr)
        self._defaults = self._check_hyper(defaults, prefix="")
        self._clip_norm = (
            None if clip_norm is None else check_real(name, "clip_norm", clip_norm, strict_low=True)
        )
        self._groups = [self._check_group(i, g) for i, g in enumerate(groups or ())]
        self._params: dict[str, Parameter] | None = None
        self._group_of: dict[str, int] = {}
        self._state: dict[str, dict[str, Any]] = {}
        if params is not None:
            self.bind(params)

    # -- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def _check_hyper(self, hyper: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """Validate a full or partial set of hyper-parameters (not lr); names get ``prefix``."""

    @abstractmethod
    def _update(self, value: np.ndarray, grad: np.ndarray, state: dict[str, Any],
                hyper: Mapping[str, Any]) -> None:
        """Apply one update to ``value`` (the parameter's writable array) in place from ``grad``."""

    # -- configuration ---------------------------------------------------------------------
    def _check_group(self, index: int, spec: GroupSpec) -> dict[str, Any]:
        owner, where = type(self).__name__, f"groups[{index}]"
        if not isinstance(spec, Mapping) or "params" not in spec:
            raise ConfigError(
                f"{owner}: invalid value for argument `{where}`. Expected a dict with a "
                f"'params' key (a name prefix or a list of names) and hyper-parameters to "
                f"override. Received: {where}={spec!r}."
            )
        selector = spec["params"]
        is_names = isinstance(selector, (list, tuple)) and all(isinstance(s, str) for s in selector)
        if not (isinstance(selector, str) and selector) and not (is_names and selector):
            raise ConfigError(
                f"{owner}: invalid value for argument `{where}['params']`. Expected a non-empty "
                f"name prefix (str) or list of parameter names. Received: {selector!r}."
            )
        allowed = ("params", "lr", *self._defaults)
        unknown = sorted(set(spec) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{owner}: {where} has unknown keys {unknown}; {owner} groups accept "
                f"{list(allowed)}."
            )
        overrides = {k: v for k, v in spec.items() if k not in ("params", "lr")}
        overrides = self._check_hyper({**self._defaults, **overrides}, prefix=where)
        return {"params": selector, "hyper": overrides, "lr_ratio": self._lr_ratio(where, spec)}

    def _lr_ratio(self, where: str, spec: GroupSpec) -> float:
        if "lr" not in spec:
            return 1.0
        group_lr = check_real(type(self).__name__, f"{where}['lr']", spec["lr"])
        if group_lr == 0.0:
            return 0.0
        if self._lr == 0.0:
            raise ConfigError(
                f"{type(self).__name__}: {where} sets lr={group_lr:g} but the optimizer's lr=0; "
                "a group's lr is kept as a ratio to the base lr, so give the optimizer a "
                "non-zero lr."
            )
        return group_lr / self._lr

    # -- binding ---------------------------------------------------------------------------
    def bind(self, params: Mapping[str, Parameter]) -> None:
        """Attach the named parameters to update (``model.parameters()``).

        Rebinding keeps the state of every name whose shape is unchanged, so a training loop
        may bind again on each ``fit`` without resetting momentum.
        """
        owner = type(self).__name__
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"{owner}.bind: expected a mapping name -> Parameter such as "
                f"model.parameters(). Received: {type(params).__name__}."
            )
        bad = [
            repr(k) for k, v in params.items()
            if not isinstance(k, str) or not isinstance(v, Parameter)
        ]
        if bad:
            raise ConfigError(
                f"{owner}.bind: every entry must map a str name to a Parameter; "
                f"bad entries: {', '.join(bad)}."
            )
        self._group_of = self._resolve_groups(params)
        self._params = dict(params)
        self._state = {
            n: s for n, s in self._state.items()
            if n in params and _state_fits(s, params[n].shape)
        }

    def _resolve_groups(self, params: Mapping[str, Parameter]) -> dict[str, int]:
        owner, group_of, problems = type(self).__name__, {}, []
        for index, group in enumerate(self._groups):
            selector = group["params"]
            if isinstance(selector, str):
                names = [n for n in params if n.startswith(selector)]
                if not names:
                    problems.append(f"groups[{index}] prefix {selector!r} matches no parameter")
            else:
                names = list(selector)
                missing = [n for n in names if n not in params]
                if missing:
                    problems.append(f"groups[{index}] names {missing} are not parameters")
            for name in names:
                if name in group_of:
                    first = group_of[name]
                    problems.append(f"{name!r} matches both groups[{first}] and groups[{index}]")
                group_of[name] = index
        if problems:
            known = ", ".join(list(params)[:8]) + (", ..." if len(params) > 8 else "")
            raise ConfigError(
                f"{owner}: parameter groups do not fit the parameters: " + "; ".join(problems)
                + f". Parameter names are: {known or '(none)'}."
            )
        return group_of

    def _bound(self, action: str) -> dict[str, Parameter]:
        if self._params is None:
            raise ConfigError(
                f"{type(self).__name__}.{action}: no parameters bound; pass params= to the "
                "constructor or call opt.bind(model.parameters()) first."
            )
        return self._params

    # -- learning rate -----------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The base learning rate (the default group's); groups follow by their ratio."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = check_real(type(self).__name__, "lr", value)

    def group_hyper(self, index: int | None = None) -> dict[str, Any]:
        """Effective hyper-parameters of ``groups[index]`` (``None``: the default group)."""
        if index is None:
            return {**self._defaults, "lr": self._lr}
        group = self._groups[index]
        return {**group["hyper"], "lr": self._lr * group["lr_ratio"]}

    def group_names(self, index: int | None = None) -> list[str]:
        """Names bound to ``groups[index]`` (``None``: the default group)."""
        want = -1 if index is None else index
        return [n for n in self._bound("group_names") if self._group_of.get(n, -1) == want]

    # -- training ------------------------------------------------------------------------------
    def step(self) -> None:
        """Update every trainable parameter that has a gradient, in place."""
        params = self._bound("step")
        live = {n: p for n, p in params.items() if p.trainable and p.grad is not None}
        if self._clip_norm is not None:
            clip_grad_norm(live, self._clip_norm)
        hypers = [self.group_hyper(i) for i in range(len(self._groups))]
        hypers.append(self.group_hyper())  # index -1: the default group
        for name, param in live.items():
            hyper = hypers[self._group_of.get(name, -1)]
            with param.writing() as value:   # the one write route: the version moves on
                self._update(value, param.grad, self._state.setdefault(name, {}), hyper)

    def zero_grad(self) -> None:
        """Forget the gradients of all bound parameters."""
        for param in self._bound("zero_grad").values():
            param.zero_grad()

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A flat, name-keyed copy of the state: ``{"lr": float, "<param>.<slot>": array | int}``.

        Arrays are NumPy copies and scalars plain numbers, so the dict can be written to
        safetensors (wrap numbers in ``np.asarray``) or JSON (``.tolist()`` the arrays) and
        loaded into an optimizer bound to a rebuilt model with the same parameter names.
        Hyper-parameters other than ``lr`` come from the constructor and are not saved.
        """
        out: dict[str, Any] = {"lr": self._lr}
        for name, state in self._state.items():
            for slot, value in state.items():
                out[f"{name}.{slot}"] = value.copy() if isinstance(value, np.ndarray) else value
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; every mismatch is reported in one WeightsError."""
        params = self._bound("load_state_dict")
        per_param: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        for key, value in state.items():
            name, _, slot = str(key).rpartition(".")
            if key == "lr":
                continue
            if not name or slot not in self.slots:
                slots = ", ".join(self.slots)
                problems.append(f"{key!r}: not a {type(self).__name__} entry (slots: {slots})")
            elif name not in params:
                problems.append(f"{key!r}: no parameter named {name!r}")
            else:
                per_param.setdefault(name, {})[slot] = np.asarray(value)
        for name, slots in per_param.items():
            problems += self._check_slots(name, slots, params[name])
        if "lr" not in state:
            problems.append("'lr': missing")
        if problems:
            raise WeightsError(
                f"{type(self).__name__}.load_state_dict: the state does not fit the bound "
                f"parameters ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
            )
        self.lr = float(np.asarray(state["lr"]))
        self._state = {n: self._restore(s, params[n]) for n, s in per_param.items()}

    def _check_slots(self, name: str, slots: dict[str, np.ndarray], param: Parameter) -> list[str]:
        problems = []
        missing = [s for s in self.slots if s not in slots]
        if missing:
            problems.append(f"{name!r}: missing {', '.join(missing)}")
        for slot, value in slots.items():
            want = () if slot == "step" else param.shape
            if value.shape != want:
                problems.append(f"'{name}.{slot}': shape {value.shape}, parameter needs {want}")
        return problems

    def _restore(self, slots: dict[str, np.ndarray], param: Parameter) -> dict[str, Any]:
        return {
            slot: int(value) if slot == "step" else np.array(value, dtype=param.value.dtype)
            for slot, value in slots.items()
        }

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._defaults.items())
        groups = f", groups={len(self._groups)}" if self._groups else ""
        return f"{type(self).__name__}(lr={self._lr:g}, {hyper}{groups})"


def _state_fits(state: Mapping[str, Any], shape: tuple[int, ...]) -> bool:
    return all(v.shape == shape for v in state.values() if isinstance(v, np.ndarray))
