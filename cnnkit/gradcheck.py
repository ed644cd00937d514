"""`gradcheck`: compare a layer's or model's backward with central finite differences in float64."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ShapeError

ZERO_GRADIENT = 1e-7


@dataclass
class GradcheckResult:
    """Worst relative error over every checked gradient, and the error of each one.

    The error of one gradient is ``max |analytic - numeric| / max(max |analytic|, max |numeric|)``:
    the largest disagreement measured against the gradient's own scale, so entries that are
    near zero do not turn rounding noise into huge ratios. A gradient whose scale is below
    ``1e-7`` (zero by construction) is compared absolutely.
    """

    max_error: float
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> str:
        """Name of the gradient with the largest error (``"input"`` or a parameter name)."""
        return max(self.errors, key=self.errors.get)

    def passed(self, tolerance: float = 1e-6) -> bool:
        return self.max_error < tolerance


def gradcheck(target, x, eps: float = 1e-6, seed: int = 0, max_entries: int | None = None,
              training: bool = True) -> GradcheckResult:
    """Check ``target.backward`` (a built layer or model) against finite differences at ``x``.

    The scalar checked is ``sum(forward(x) * r)`` for a fixed random ``r`` (summed over the
    outputs of a model with several). ``x`` is an array, or a list of arrays for a model with
    several inputs (each input's gradient is then checked as ``input[i]``). Parameters are cast
    to float64 for the check and restored afterwards. ``max_entries`` limits how many entries of
    each array are perturbed (chosen at random), for large layers.
    """
    params = target.parameters()
    saved = {name: param.value for name, param in params.items()}
    rng = np.random.default_rng(seed)
    several_in = isinstance(x, (list, tuple))
    xs = [np.array(v, np.float64) for v in x] if several_in else [np.array(x, np.float64)]
    argument = xs if several_in else xs[0]
    try:
        for param in params.values():
            param.value = param.value.astype(np.float64)
        outputs = target.forward(argument, training=training)
        several_out = isinstance(outputs, (list, tuple))
        probes = [rng.standard_normal(y.shape) for y in (outputs if several_out else [outputs])]

        def loss() -> float:
            ys = target.forward(argument, training=training)
            return float(sum(np.sum(y * r) for y, r in zip(ys if several_out else [ys], probes)))

        target.zero_grad()
        target.forward(argument, training=training)
        dxs = target.backward([r.copy() for r in probes] if several_out else probes[0].copy())
        dxs = list(dxs) if several_in else [dxs]
        errors = {}
        for index, (array, dx) in enumerate(zip(xs, dxs)):
            analytic = np.zeros_like(array) if dx is None else dx   # an input no gradient reaches
            errors[f"input[{index}]" if several_in else "input"] = _compare(
                analytic, _numeric(loss, array, eps, max_entries, rng))
        for name, param in params.items():
            if param.trainable:
                analytic = np.zeros_like(param.value) if param.grad is None else param.grad
                with param.writing() as array:   # perturbed in place, the version moving at each write
                    numeric = _numeric(loss, array, eps, max_entries, rng, param.mark_changed)
                errors[name] = _compare(analytic, numeric)
    finally:
        for name, param in params.items():
            param.value = saved[name]
            param.grad = None
    return GradcheckResult(max(errors.values()), errors)


def _numeric(loss, array: np.ndarray, eps: float, max_entries: int | None, rng,
             changed=lambda: None) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of ``loss`` with respect to (some entries of) ``array``, perturbed in place.

    ``changed`` is called after every in-place write (a parameter's ``mark_changed``).
    """
    flat = array.reshape(-1)
    if flat.base is not array and not np.shares_memory(flat, array):
        raise ShapeError("gradcheck: the checked array must be contiguous")
    indices = np.arange(flat.size)
    if max_entries is not None and flat.size > max_entries:
        indices = rng.choice(flat.size, max_entries, replace=False)
    numeric = np.empty(len(indices))
    for position, index in enumerate(indices):
        original = flat[index]
        flat[index] = original + eps
        changed()
        plus = loss()
        flat[index] = original - eps
        changed()
        minus = loss()
        flat[index] = original
        changed()
        numeric[position] = (plus - minus) / (2 * eps)
    return indices, numeric


def _compare(analytic: np.ndarray, numeric: tuple[np.ndarray, np.ndarray]) -> float:
    indices, values = numeric
    picked = np.asarray(analytic, np.float64).reshape(-1)[indices]
    difference = float(np.abs(picked - values).max(initial=0.0))
    scale = max(np.abs(picked).max(initial=0.0), np.abs(values).max(initial=0.0))
    # a gradient that is zero by construction (a bias cancelled by batch norm) is compared absolutely
    return difference if scale < ZERO_GRADIENT else difference / scale
