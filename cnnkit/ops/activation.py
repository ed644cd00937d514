"""Element-wise activations and maxout: forward kernels and the backward that matches each.

Every function takes arrays and returns arrays; none keeps state. ``out=`` lets a caller
that owns the input (a layer told its input is a fresh array) compute in place; without it a
new array is returned and the input is never modified. Results keep the input's dtype
(float32 stays float32, float64 stays float64): scalars enter as Python floats so that
NumPy never promotes a float32 volume to float64.
"""

from __future__ import annotations

import numpy as np


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``max(0, x)``."""
    return np.maximum(x, 0, out=out)


def relu_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ReLU from its output ``y``: ``dy`` where ``y > 0``, else 0 (0 at the kink, as PyTorch).

    ``out`` may be ``dy`` itself when the caller owns it: no new volume is allocated then.
    """
    # multiplying by a boolean mask is several times faster than np.where on large volumes
    return np.multiply(dy, y > 0, dtype=dy.dtype, out=out)


def relu6(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``min(max(0, x), 6)`` (MobileNet's activation: ReLU capped at 6, robust in low precision)."""
    return np.clip(x, 0.0, 6.0, out=out)


def relu6_backward(dy: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of ReLU6 from its output ``y``: ``dy`` where ``0 < y < 6``, else 0 (0 at both kinks,
    as PyTorch's ``hardtanh`` backward). ``out`` may be ``dy`` itself when the caller owns it."""
    inside = y > 0
    inside &= y < 6
    return np.multiply(dy, inside, dtype=dy.dtype, out=out)


def leaky_relu(x: np.ndarray, negative_slope: float, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` where ``x > 0``, ``negative_slope * x`` elsewhere (``negative_slope >= 0``)."""
    slope = float(negative_slope)
    scaled = np.multiply(x, slope)
    # a*x lies below x for positive x exactly when a <= 1: a max (or min) picks the branch, no mask
    pick = np.maximum if slope <= 1.0 else np.minimum
    return pick(x, scaled, out=scaled if out is None else out)


def leaky_relu_backward(dy: np.ndarray, y: np.ndarray, negative_slope: float) -> np.ndarray:
    """Gradient of leaky ReLU from its output ``y`` (``y > 0`` exactly where ``x > 0`` since the slope is >= 0)."""
    slope = float(negative_slope)
    # dy * (slope + (1 - slope) * [y > 0]): plain ufuncs; masked copies are 5x slower on large volumes
    factor = (y > 0).astype(dy.dtype)
    factor *= 1.0 - slope
    factor += slope
    factor *= dy
    return factor


def _prelu_factor(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The local slope of PReLU at ``x``: 1 where ``x > 0``, ``alpha[c]`` elsewhere."""
    alpha = alpha.astype(x.dtype, copy=False)
    factor = (x > 0).astype(x.dtype)
    factor *= 1 - alpha
    factor += alpha
    return factor


def prelu(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Per-channel parametric ReLU: ``x`` where ``x > 0``, ``alpha[c] * x`` elsewhere (channels last)."""
    y = _prelu_factor(x, alpha)
    y *= x
    return y


def prelu_backward(dy: np.ndarray, x: np.ndarray, alpha: np.ndarray,
                   need_alpha_grad: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(dx, dalpha)``: ``dalpha[c]`` sums ``dy * x`` over the entries of channel ``c`` with ``x <= 0``."""
    dx = _prelu_factor(x, alpha)
    dx *= dy
    dalpha = None
    if need_alpha_grad:
        channels = x.shape[-1]
        negative_part = np.minimum(x, 0)  # x where the slope applies, 0 elsewhere
        dalpha = np.einsum("ij,ij->j", dy.reshape(-1, channels), negative_part.reshape(-1, channels))
    return dx, dalpha


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + exp(-x))`` without overflow: ``exp`` only ever sees ``-|x|``.

    For ``x >= 0`` it is ``1 / (1 + e)`` and for ``x < 0`` ``e / (1 + e)`` with ``e = exp(-|x|)``,
    so tiny outputs for very negative ``x`` keep their relative precision.
    """
    positive = x >= 0
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)
    result = np.add(e, 1, out=out)  # may alias x when out is x: x is not read after this line
    # numerator: 1 where x >= 0, e elsewhere; e <= 1 so a maximum with the mask selects it
    # (masked ufuncs and np.where are several times slower on large volumes)
    np.maximum(e, positive, out=e)
    np.divide(e, result, out=result)
    return result


def sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of the sigmoid from its output: ``dy * y * (1 - y)``."""
    dx = np.subtract(1, y, dtype=y.dtype)
    dx *= y
    dx *= dy
    return dx


def tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Hyperbolic tangent."""
    return np.tanh(x, out=out)


def tanh_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of tanh from its output: ``dy * (1 - y**2)``."""
    dx = np.multiply(y, y)
    np.subtract(1, dx, out=dx)
    dx *= dy
    return dx


def elu(x: np.ndarray, alpha: float, out: np.ndarray | None = None) -> np.ndarray:
    """``x`` where ``x > 0``, ``alpha * (exp(x) - 1)`` elsewhere (Clevert et al. 2015), with ``expm1``
    so that small negative inputs keep their precision."""
    negative = np.minimum(x, 0.0)
    np.expm1(negative, out=negative)
    negative *= float(alpha)
    y = np.maximum(x, 0.0, out=out)   # may alias x: x is not read after this line
    y += negative
    return y


def elu_backward(dy: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Gradient of ELU from its output ``y`` (``alpha >= 0``, so ``y > 0`` exactly where ``x > 0``):
    ``dy`` there, ``dy * alpha * exp(x) = dy * (y + alpha)`` elsewhere (``alpha`` at 0, as PyTorch)."""
    factor = np.minimum(y, 0.0)
    factor += float(alpha)
    np.copyto(factor, 1.0, where=y > 0)
    factor *= dy
    return factor


def hard_sigmoid(x: np.ndarray, alpha: float, beta: float, out: np.ndarray | None = None) -> np.ndarray:
    """``clip(alpha * x + beta, 0, 1)``: ONNX's HardSigmoid (PyTorch's ``hardsigmoid`` is alpha=1/6, beta=1/2)."""
    y = np.multiply(x, float(alpha), out=out)
    y += float(beta)
    return np.clip(y, 0.0, 1.0, out=y)


def hard_sigmoid_backward(dy: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Gradient of the hard sigmoid from its output: ``alpha * dy`` where ``0 < y < 1``, else 0 (0 at
    both corners, as PyTorch)."""
    inside = y > 0
    inside &= y < 1
    dx = np.multiply(dy, inside, dtype=dy.dtype)
    dx *= float(alpha)
    return dx


def hard_swish(x: np.ndarray) -> np.ndarray:
    """``x * clip(x / 6 + 1/2, 0, 1)`` (MobileNetV3's activation; ONNX's HardSwish, PyTorch's ``hardswish``)."""
    gate = hard_sigmoid(x, 1.0 / 6.0, 0.5)
    gate *= x
    return gate


def hard_swish_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Gradient of the hard swish from its input (the output does not determine it: ``x (x + 3) / 6``
    takes each value below 0 twice): 0 for ``x < -3``, ``x / 3 + 1/2`` for ``-3 <= x <= 3``, 1 above
    (PyTorch's choice at the corners)."""
    factor = np.multiply(x, 1.0 / 3.0)
    factor += 0.5
    np.copyto(factor, 0.0, where=x < -3)
    np.copyto(factor, 1.0, where=x > 3)
    factor *= dy
    return factor


def clip(x: np.ndarray, low: float | None, high: float | None, out: np.ndarray | None = None) -> np.ndarray:
    """``min(max(x, low), high)``; a bound that is None does not apply (ONNX's Clip)."""
    low = -np.inf if low is None else float(low)
    high = np.inf if high is None else float(high)
    return np.clip(x, low, high, out=out)


def clip_backward(dy: np.ndarray, y: np.ndarray, low: float | None, high: float | None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Gradient of the clip from its output: ``dy`` where ``low < y < high``, else 0 (0 on a bound,
    like ReLU6; ``out`` may be ``dy`` itself when the caller owns it)."""
    inside = np.ones(y.shape, bool) if low is None else y > float(low)
    if high is not None:
        inside &= y < float(high)
    return np.multiply(dy, inside, dtype=dy.dtype, out=out)


def maxout(x: np.ndarray, pieces: int) -> tuple[np.ndarray, np.ndarray]:
    """Maxout over channel groups: output channel ``j`` is the max of channels ``j*pieces ... j*pieces+pieces-1``.

    Returns ``(y, argmax)`` where ``argmax`` (the winning piece of each output, the smallest
    unsigned type that holds it) is what :func:`maxout_backward` needs. Ties go to the first piece.
    """
    groups = x.reshape(*x.shape[:-1], x.shape[-1] // pieces, pieces)
    argmax = groups.argmax(axis=-1).astype(np.min_scalar_type(pieces - 1), copy=False)
    y = np.take_along_axis(groups, argmax[..., None], axis=-1)[..., 0]
    return y, argmax


def maxout_backward(dy: np.ndarray, argmax: np.ndarray, pieces: int) -> np.ndarray:
    """Route each output gradient to the input channel that won its group; the others get 0."""
    dx = np.zeros((*dy.shape, pieces), dtype=dy.dtype)
    np.put_along_axis(dx, argmax[..., None].astype(np.intp), dy[..., None], axis=-1)
    return dx.reshape(*dy.shape[:-1], dy.shape[-1] * pieces)
