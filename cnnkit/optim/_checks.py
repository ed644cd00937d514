"""Validation of optimizer and schedule hyper-parameters, with Keras-style messages."""

from __future__ import annotations

import math
from numbers import Integral, Real

from cnnkit.errors import ConfigError


def _fail(owner: str, name: str, expected: str, value: object, fix: str = "") -> ConfigError:
    hint = f" {fix}" if fix else ""
    return ConfigError(
        f"{owner}: invalid value for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}.{hint}"
    )


def check_real(
    owner: str,
    name: str,
    value: object,
    *,
    low: float = 0.0,
    strict_low: bool = False,
    high: float | None = None,
    include_high: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite number in the range, else raise ConfigError.

    The range is ``low <= value`` (``low < value`` when ``strict_low``) and ``value < high``
    (``value <= high`` when ``include_high``).
    """
    if high is None:
        expected = f"a finite number {'>' if strict_low else '>='} {low:g}"
    else:
        left, right = "(" if strict_low else "[", "]" if include_high else ")"
        expected = f"a number in {left}{low:g}, {high:g}{right}"
    # bool is an Integral, but lr=True is a mistake, not a number
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise _fail(owner, name, expected, value)
    number = float(value)
    too_low = number <= low if strict_low else number < low
    too_high = high is not None and (number > high if include_high else number >= high)
    if too_low or too_high:
        raise _fail(owner, name, expected, value)
    return number


def check_int(owner: str, name: str, value: object, *, low: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= ``low``, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise _fail(owner, name, f"an integer >= {low}", value)
    return int(value)


def check_betas(owner: str, name: str, value: object) -> tuple[float, float]:
    """Return Adam's ``(beta1, beta2)``, each in [0, 1), else raise ConfigError."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise _fail(owner, name, "a pair (beta1, beta2), each in [0, 1)", value)
    beta1 = check_real(owner, f"{name}[0]", value[0], high=1.0)
    beta2 = check_real(owner, f"{name}[1]", value[1], high=1.0)
    return beta1, beta2


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError."""
    if value not in choices:
        raise _fail(owner, name, "one of " + ", ".join(repr(c) for c in choices), value)
    return str(value)
