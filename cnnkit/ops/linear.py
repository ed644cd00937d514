"""The fully connected (dense) kernel: ``y = x @ W + b`` and its gradients.

``W`` is stored ``(in, out)`` so the forward is one matrix product on the batch ``(B, in)``
with no transpose; PyTorch's ``nn.Linear`` stores the transpose ``(out, in)``.
"""

from __future__ import annotations

import numpy as np

from .products import matmul
from .reduce import sum_rows


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ weight + bias`` for ``x`` (B, in), ``weight`` (in, out), ``bias`` (out,) -> (B, out)."""
    y = matmul(x, weight)
    if bias is not None:
        y += bias  # in place: the product is a fresh array, no second (B, out) temporary
    return y


def linear_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, need_weight_grad: bool = True,
                    need_bias_grad: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Return ``(dx, dweight, dbias)`` = ``(dy @ W^T, x^T @ dy, sum_b dy)``.

    Gradients that are not needed (frozen parameters, no bias) come back as ``None`` and cost nothing.
    """
    dx = matmul(dy, weight.T)
    dweight = matmul(x.T, dy) if need_weight_grad else None
    dbias = sum_rows(dy) if need_bias_grad else None
    return dx, dweight, dbias
