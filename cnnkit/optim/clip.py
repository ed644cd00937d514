"""Gradient clipping by global L2 norm (the rule of ``torch.nn.utils.clip_grad_norm_``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from cnnkit.optim._checks import check_real
from cnnkit.parameter import Parameter

# Added to the norm before dividing, as torch does, so a zero gradient never divides by zero.
_NORM_EPS = 1e-6


def global_grad_norm(params: Iterable[Parameter]) -> float:
    """L2 norm of all gradients taken together: ``sqrt(sum_i ||g_i||^2)``."""
    total = 0.0
    for param in params:
        flat = param.grad.reshape(-1)
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_grad_norm(
    params: Mapping[str, Parameter] | Iterable[Parameter], max_norm: float
) -> float:
    """Scale gradients in place so their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping (as ``torch.nn.utils.clip_grad_norm_``), so a training
    loop can log it or stop on a non-finite value. Gradients are multiplied by
    ``max_norm / (norm + 1e-6)`` when that factor is below 1. Only trainable parameters with a
    gradient count: a frozen parameter's gradient never reaches an update.

    Args:
        params: ``model.parameters()`` (name -> Parameter) or any iterable of Parameters.
        max_norm: the largest global norm allowed, > 0.
    """
    max_norm = check_real("clip_grad_norm", "max_norm", max_norm, strict_low=True)
    values = params.values() if isinstance(params, Mapping) else params
    live = [p for p in values if p.trainable and p.grad is not None]
    norm = global_grad_norm(live)
    scale = max_norm / (norm + _NORM_EPS)
    # a NaN norm fails this test and leaves gradients as they are; the caller sees the NaN
    if scale < 1.0:
        for param in live:
            param.grad *= param.grad.dtype.type(scale)
    return norm
