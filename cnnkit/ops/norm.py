"""Batch normalisation kernels over the last (channel) axis of a channels-last array.

Statistics are taken per channel over every other axis: ``(B, H, W)`` for a volume
``(B, H, W, C)``, ``B`` for vectors ``(B, C)``. With ``N`` the number of values per channel:

- training:  ``mu = mean(x)``, ``var = mean((x - mu)^2)`` (biased), ``x_hat = (x - mu) / sqrt(var + eps)``,
  ``y = gamma * x_hat + beta``;
- the backward of that, through the mean and the variance:
  ``dx = gamma / sqrt(var + eps) / N * (N * dy - sum(dy) - x_hat * sum(dy * x_hat))``;
- with fixed statistics (inference, or frozen-statistics fine-tuning) the map is affine,
  ``y = x * scale + shift``, and ``dx = dy * gamma / sqrt(running_var + eps)``; in inference it
  can be folded into the convolution before it (:func:`folded_weights`).

``gamma``/``beta`` gradients are ``sum(dy * x_hat)`` and ``sum(dy)`` in both cases.

Synchronised over processes (data-parallel training), the statistics are those of the global
batch: each process adds up ``N``, ``sum(x)`` and ``sum(x^2)`` over its part, ``total`` sums
them over the processes (an allreduce), and ``mu = sum(x) / N``, ``var = sum(x^2) / N - mu^2``.
The backward needs ``sum(dy)`` and ``sum(dy * x_hat)`` over the global batch too; the ``gamma`` and
``beta`` gradients returned stay this process's part (the gradient allreduce adds them up).
The sums are taken in float64, so the one-pass variance loses nothing a float32 network keeps.
"""

from __future__ import annotations

import numpy as np

from .reduce import sum_rows


def _rows(x: np.ndarray) -> np.ndarray:
    """View ``x`` as ``(N, C)``: one row per position, one column per channel."""
    return x.reshape(-1, x.shape[-1])


def batch_norm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalise with the batch's statistics.

    Returns ``(y, x_hat, inv_std, mean, var)`` with ``var`` the biased batch variance;
    ``x_hat`` and ``inv_std`` are what :func:`batch_norm_train_backward` needs.
    """
    rows = _rows(x)
    dtype = x.dtype
    mean = sum_rows(rows) / rows.shape[0]
    x_hat = rows - mean
    var = np.einsum("ij,ij->j", x_hat, x_hat) / rows.shape[0]  # no (N, C) temporary for the squares
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat *= inv_std
    y = np.multiply(x_hat, gamma.astype(dtype, copy=False))
    y += beta.astype(dtype, copy=False)
    return y.reshape(x.shape), x_hat.reshape(x.shape), inv_std, mean, var


def batch_norm_train_backward(dy: np.ndarray, x_hat: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray,
                              overwrite_x_hat: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(dx, dgamma, dbeta)`` for a forward that used the batch's statistics.

    With ``overwrite_x_hat`` the (no longer needed) ``x_hat`` buffer becomes ``dx``, so the
    backward allocates no full-size array.
    """
    dy_rows, xh_rows = _rows(dy), _rows(x_hat)
    count = dy_rows.shape[0]
    dbeta = sum_rows(dy_rows)
    dgamma = np.einsum("ij,ij->j", dy_rows, xh_rows)
    dx = xh_rows if overwrite_x_hat else xh_rows.copy()
    dx *= dgamma / count
    np.subtract(dy_rows, dx, out=dx)
    dx -= dbeta / count
    dx *= (gamma * inv_std).astype(dx.dtype, copy=False)
    return dx.reshape(dy.shape), dgamma, dbeta


def batch_norm_train_synced(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, total
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`batch_norm_train` with the statistics of the batch over all processes.

    ``total(array) -> array`` sums a float64 array over the processes. Returns
    ``(y, x_hat, inv_std, mean, var, count)``, ``count`` being the values per channel over all processes.
    """
    rows = _rows(x)
    dtype, channels = x.dtype, rows.shape[1]
    local = np.empty(1 + 2 * channels)
    local[0] = rows.shape[0]
    local[1:1 + channels] = rows.sum(axis=0, dtype=np.float64)
    local[1 + channels:] = np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
    sums = total(local)
    count = int(round(sums[0]))
    mean = sums[1:1 + channels] / count
    var = np.maximum(sums[1 + channels:] / count - mean * mean, 0.0)   # rounding may dip below 0
    inv_std = (1.0 / np.sqrt(var + eps)).astype(dtype)
    x_hat = rows - mean.astype(dtype)
    x_hat *= inv_std
    y = np.multiply(x_hat, gamma.astype(dtype, copy=False))
    y += beta.astype(dtype, copy=False)
    return y.reshape(x.shape), x_hat.reshape(x.shape), inv_std, mean.astype(dtype), var.astype(dtype), count


def batch_norm_train_synced_backward(dy: np.ndarray, x_hat: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray,
                                     count: int, total) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(dx, dgamma, dbeta)`` for :func:`batch_norm_train_synced`: ``dx`` through the global
    statistics (``count`` values per channel over all processes), ``dgamma``/``dbeta`` this process's part."""
    dy_rows, xh_rows = _rows(dy), _rows(x_hat)
    channels = dy_rows.shape[1]
    dbeta = sum_rows(dy_rows)
    dgamma = np.einsum("ij,ij->j", dy_rows, xh_rows)
    sums = total(np.concatenate([dbeta, dgamma]).astype(np.float64))
    dtype = dy.dtype
    dx = np.multiply(xh_rows, (sums[channels:] / count).astype(dtype))
    np.subtract(dy_rows, dx, out=dx)
    dx -= (sums[:channels] / count).astype(dtype)
    dx *= (gamma * inv_std).astype(dtype, copy=False)
    return dx.reshape(dy.shape), dgamma, dbeta


def batch_norm_fixed(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                     eps: float) -> np.ndarray:
    """Normalise with given statistics (running mean and variance): an affine map per channel."""
    scale, shift = fixed_scale_shift(mean, var, gamma, beta, eps, x.dtype)
    y = np.multiply(x, scale)
    y += shift
    return y


def fixed_scale_shift(mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                      dtype) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel ``(scale, shift)`` of batch norm with fixed statistics, in ``dtype``."""
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = beta - mean * scale
    return scale.astype(dtype), shift.astype(dtype)


def folded_weights(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray,
                   dtype) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias of a layer that gives at once what ``weight``/``bias`` followed by the
    per-channel map ``y * scale + shift`` give (batch norm with fixed statistics folded into the
    convolution before it): ``w' = w * scale`` over the last axis (the output channels) and
    ``b' = b * scale + shift``, which with :func:`fixed_scale_shift`'s ``scale = gamma / sqrt(var
    + eps)`` and ``shift = beta - mean * scale`` is ``(b - mean) * gamma / sqrt(var + eps) + beta``.
    ``bias`` None counts as zeros. Computed in float64 and rounded once to ``dtype``.

    The folded layer rounds differently from the pair (its products are of ``w * scale`` rounded,
    not of ``w`` with the result scaled), so the two agree to float32 rounding, not bit for bit.
    """
    scale64 = np.asarray(scale, np.float64)
    folded = (weight.astype(np.float64) * scale64).astype(dtype)
    shift64 = np.asarray(shift, np.float64)
    folded_bias = shift64 if bias is None else bias.astype(np.float64) * scale64 + shift64
    return folded, folded_bias.astype(dtype)


def batch_norm_frozen(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                      eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed statistics, kept for a backward: returns ``(y, x_hat, inv_std)``.

    The same map as :func:`batch_norm_fixed`, computed through ``x_hat`` because the gradient of
    ``gamma`` needs it (forming it from ``x`` in the backward would cancel digits when
    ``|mean| >> std``).
    """
    dtype = x.dtype
    inv_std = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(dtype)
    x_hat = np.subtract(x, mean.astype(dtype, copy=False))
    x_hat *= inv_std
    y = np.multiply(x_hat, gamma.astype(dtype, copy=False))
    y += beta.astype(dtype, copy=False)
    return y, x_hat, inv_std


def batch_norm_frozen_backward(dy: np.ndarray, x_hat: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray,
                               need_param_grads: bool = True
                               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Return ``(dx, dgamma, dbeta)`` for a forward with fixed statistics (they are constants here)."""
    dx = np.multiply(dy, (gamma * inv_std).astype(dy.dtype, copy=False))
    if not need_param_grads:
        return dx, None, None
    dy_rows = _rows(dy)
    return dx, np.einsum("ij,ij->j", dy_rows, _rows(x_hat)), sum_rows(dy_rows)


def update_running(running: np.ndarray, batch: np.ndarray, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place (PyTorch's rule)."""
    running *= 1.0 - momentum
    running += (momentum * batch).astype(running.dtype, copy=False)
