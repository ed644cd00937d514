"""Softmax, log-softmax and the fused softmax cross-entropy loss, all numerically stable.

Each subtracts the row maximum before ``exp`` (softmax is unchanged by a constant shift),
so logits of 1e4 neither overflow nor turn into NaN.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError, ShapeError


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``exp(z) / sum(exp(z))`` along ``axis``."""
    e = z - z.max(axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Gradient of softmax from its output ``y``: ``y * (dy - sum(dy * y))`` along ``axis``."""
    dx = np.multiply(dy, y)
    total = dx.sum(axis=axis, keepdims=True)
    np.subtract(dy, total, out=dx)
    dx *= y
    return dx


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``z - log(sum(exp(z)))`` along ``axis``, computed as ``(z - max) - log(sum(exp(z - max)))``."""
    shifted = z - z.max(axis=axis, keepdims=True)
    log_total = np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    shifted -= log_total
    return shifted


def log_softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Gradient of log-softmax from its output ``y``: ``dy - exp(y) * sum(dy)`` along ``axis``."""
    dx = np.exp(y)
    dx *= dy.sum(axis=axis, keepdims=True)
    np.subtract(dy, dx, out=dx)
    return dx


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``, and its gradient.

    Args:
        logits: class scores ``(B, K)`` (before any softmax).
        labels: class indices ``(B,)`` in ``[0, K)``.

    Returns ``(loss, dlogits)`` where ``loss = mean_b(logsumexp(z_b) - z_b[label_b])`` and
    ``dlogits = (softmax(logits) - one_hot(labels)) / B``, in the dtype of ``logits``.
    """
    logits = np.asarray(logits)
    labels = _check_labels(logits, labels)
    batch = logits.shape[0]
    rows = np.arange(batch)
    grad = logits - logits.max(axis=1, keepdims=True)
    picked = grad[rows, labels].astype(np.float64)
    np.exp(grad, out=grad)
    totals = grad.sum(axis=1)
    loss = float(np.mean(np.log(totals.astype(np.float64)) - picked)) if batch else 0.0
    grad /= totals[:, None]
    grad[rows, labels] -= 1
    grad /= max(batch, 1)
    return loss, grad


def _check_labels(logits: np.ndarray, labels) -> np.ndarray:
    """Raise unless ``logits`` is ``(B, K)`` floating and ``labels`` is ``B`` integers in ``[0, K)``."""
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
        raise ShapeError(f"softmax_cross_entropy: logits must be a float array of shape (batch, classes); "
                         f"received shape {logits.shape} dtype {logits.dtype}")
    labels = np.asarray(labels)
    classes = logits.shape[1]
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != logits.shape[:1]:
        raise DataError(f"softmax_cross_entropy: labels must be {logits.shape[0]} integer class indices, "
                        f"shape ({logits.shape[0]},); received shape {labels.shape} dtype {labels.dtype}; "
                        f"convert one-hot labels with argmax(axis=1)")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        first = int(labels[np.argmax(bad)])
        raise DataError(f"softmax_cross_entropy: label {first} is outside [0, {classes}) for {classes} classes; "
                        f"labels must be class indices 0..{classes - 1}")
    return labels.astype(np.intp, copy=False)
