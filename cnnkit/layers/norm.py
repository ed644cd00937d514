"""Batch normalisation over the channels of a volume."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from ..arithmetic import batchnorm_params
from ..errors import ConfigError, ShapeError
from ..ops.norm import (batch_norm_fixed, batch_norm_frozen, batch_norm_frozen_backward, batch_norm_train,
                        batch_norm_train_backward, batch_norm_train_synced, batch_norm_train_synced_backward,
                        fixed_scale_shift, update_running)
from ..parameter import Parameter
from .base import Layer

# The sum over processes that training forwards use for their batch statistics; None: this
# process's batch alone. A context variable rather than a flag on each layer: it belongs to the
# training step that runs, not to the model, and is gone when the step ends.
_statistics_total: ContextVar = ContextVar("batch_statistics_total", default=None)


@contextmanager
def synchronised_batch_norm(total):
    """Inside the block, every ``BatchNorm2d`` training forward normalises with the statistics of
    the batch over all processes, ``total(array) -> array`` summing a float64 array over them
    (data-parallel training: 2 processes at batch 16 compute what 1 process at batch 32 does)."""
    token = _statistics_total.set(total)
    try:
        yield
    finally:
        _statistics_total.reset(token)


class BatchNorm2d(Layer):
    """Batch norm (Ioffe and Szegedy 2015) per channel, as PyTorch's ``BatchNorm2d``.

    Training normalises with the batch's mean and (biased) variance and updates the running
    statistics with ``running = (1 - momentum) * running + momentum * batch`` (the unbiased
    variance); inference uses the running statistics. Parameters: ``weight`` (gamma) and ``bias``
    (beta) are learned (2C); ``running_mean`` and ``running_var`` are buffers, saved but not
    learned (2C).
    Works on volumes ``(B, H, W, C)`` and on vectors ``(B, C)``.

    In data-parallel training (``fit(..., distributed=...)`` with more than one process) the
    batch statistics, and the sums their backward needs, are those of the whole batch over all
    processes (:func:`synchronised_batch_norm`), as PyTorch's ``SyncBatchNorm``.

    Frozen statistics (fine-tuning with batch norm "frozen", as in ``model.eval()`` for BN
    only): ``frozen_stats=True``, or set ``layer.frozen_stats = True`` (saved with the
    architecture either way). Then ``forward(x, training=True)`` normalises
    with the running statistics, leaves them unchanged, and caches what :meth:`backward`
    needs; the layer is the affine map ``x * gamma / sqrt(running_var + eps) + shift`` and
    ``gamma``/``beta`` still learn unless frozen themselves. ``forward(x, training=False)``
    never caches, whatever the flag.

    In inference the layer is the affine map ``x * scale + shift`` (:meth:`inference_affine`),
    and the executor folds it into a convolution whose output it alone reads (see
    :mod:`cnnkit.executor`; ``cnnkit.runtime(fold_batch_norm=False)`` turns that off): the
    convolution runs with ``w * scale`` and ``b * scale + shift`` and this layer's call does not
    run. The folded weights are kept until the convolution's or this layer's parameters, or the
    running statistics (:attr:`buffers_version`), change.
    """

    fresh_output = True
    affine_in_inference = True

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, frozen_stats: bool = False,
                 name: str | None = None):
        super().__init__(name)
        for argument, value in (("momentum", momentum), ("eps", eps)):
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name or 'BatchNorm2d'}: {argument} must be a number in [0, 1]; "
                                  f"received {argument}={value!r}")
        if not isinstance(frozen_stats, bool):
            raise ConfigError(f"{name or 'BatchNorm2d'}: frozen_stats must be True or False; "
                              f"received frozen_stats={frozen_stats!r}")
        self.momentum = float(momentum)
        self.eps = float(eps)
        #: Use the running statistics (and keep them fixed) even in a training forward.
        self.frozen_stats = frozen_stats

    def _build(self, input_shape, rng):
        channels = input_shape[-1]
        self._params = {
            "weight": Parameter(np.ones(channels, np.float32)),
            "bias": Parameter(np.zeros(channels, np.float32)),
        }
        self._buffers = {"running_mean": np.zeros(channels, np.float32),
                         "running_var": np.ones(channels, np.float32)}
        return input_shape

    def param_count(self) -> int:
        return batchnorm_params(self.input_shape[-1])[0]

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        gamma, beta = self._params["weight"].value, self._params["bias"].value
        mean, var = self._buffers["running_mean"], self._buffers["running_var"]
        if not training:
            return batch_norm_fixed(x, mean, var, gamma, beta, self.eps), None
        if self.frozen_stats:
            y, x_hat, inv_std = batch_norm_frozen(x, mean, var, gamma, beta, self.eps)
            return y, ("frozen", x_hat, inv_std)
        total = _statistics_total.get()
        if total is None:
            self._check_count(x.size // x.shape[-1], x.shape)
            y, x_hat, inv_std, batch_mean, batch_var = batch_norm_train(x, gamma, beta, self.eps)
            count, mode = x.size // x.shape[-1], "batch"
        else:
            y, x_hat, inv_std, batch_mean, batch_var, count = batch_norm_train_synced(x, gamma, beta, self.eps, total)
            self._check_count(count, x.shape)   # the same global count on every process: all raise alike
            mode = ("synced", total, count)
        update_running(mean, batch_mean, self.momentum)
        # the running variance estimates the population: unbiased, as PyTorch
        update_running(var, batch_var * (count / (count - 1)), self.momentum)
        self.mark_buffers_changed()   # weights folded with the old statistics are stale
        return y, (mode, x_hat, inv_std)

    def inference_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, shift)`` in float64 of the inference map: ``scale = gamma / sqrt(running_var +
        eps)``, ``shift = beta - running_mean * scale``."""
        gamma, beta = self._params["weight"].value, self._params["bias"].value
        return fixed_scale_shift(self._buffers["running_mean"], self._buffers["running_var"], gamma, beta,
                                 self.eps, np.float64)

    def state_version(self) -> tuple:
        # eps is a plain attribute that changes the map too
        return (*super().state_version(), self.eps)

    def _check_count(self, count: int, shape) -> None:
        if count < 2:
            raise ShapeError(f"{self.label}: training needs more than one value per channel to estimate a "
                             f"variance; received input shape {shape}; use a batch of at least 2, or "
                             f"frozen_stats = True to normalise with the running statistics")

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        mode, x_hat, inv_std = context
        self.check_grad(dy, x_hat.shape)
        gamma, beta = self._params["weight"], self._params["bias"]
        if isinstance(mode, tuple):
            _, total, count = mode
            dx, dgamma, dbeta = batch_norm_train_synced_backward(dy, x_hat, inv_std, gamma.value, count, total)
        elif mode == "batch":
            # the context is this call's alone and is dropped after it: x_hat's buffer can become dx
            dx, dgamma, dbeta = batch_norm_train_backward(dy, x_hat, inv_std, gamma.value, overwrite_x_hat=True)
        else:
            dx, dgamma, dbeta = batch_norm_frozen_backward(dy, x_hat, inv_std, gamma.value,
                                                           need_param_grads=gamma.trainable or beta.trainable)
        if gamma.trainable:
            gamma.accumulate(dgamma, fresh=True)
        if beta.trainable:
            beta.accumulate(dbeta, fresh=True)
        return dx

    def cached_per_sample(self) -> int:
        return self.activations()  # the normalised input
