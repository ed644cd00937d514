"""`Parameter`: a learnable array, its gradient, and whether training may change it."""

from __future__ import annotations

import numpy as np


class Parameter:
    """A learnable array with its accumulated gradient.

    ``grad`` is ``None`` until a backward pass adds into it (as in PyTorch), so a model used
    only for inference never pays for a second copy of its weights.

    ``version`` counts changes of the value, so layers may cache things derived from it
    (a convolution's Winograd-transformed filters). Assigning ``value``, optimizer steps and
    state-dict loads count; code that writes into ``value`` in place itself calls
    :meth:`mark_changed`.
    """

    __slots__ = ("_value", "grad", "trainable", "version")

    def __init__(self, value: np.ndarray, trainable: bool = True):
        self._value = value
        self.grad: np.ndarray | None = None
        self.trainable = trainable
        self.version = 0

    @property
    def value(self) -> np.ndarray:
        return self._value

    @value.setter
    def value(self, array: np.ndarray) -> None:
        self._value = array
        self.version += 1

    def mark_changed(self) -> None:
        """Record that ``value`` was modified in place."""
        self.version += 1

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def size(self) -> int:
        return int(self.value.size)

    def accumulate(self, grad: np.ndarray, fresh: bool = False) -> None:
        """Add ``grad`` into ``self.grad`` (allocating it on first use).

        ``fresh=True`` hands over an array nobody else holds (a layer's newly computed gradient),
        so the first accumulation keeps it instead of copying it: VGG16's fc6 gradient alone is
        400 MB, copied every step otherwise.
        """
        if self.grad is None:
            adopt = fresh and isinstance(grad, np.ndarray) and grad.dtype == self._value.dtype
            self.grad = grad if adopt else np.array(grad, dtype=self._value.dtype, copy=True)
        else:
            self.grad += grad

    def zero_grad(self) -> None:
        """Forget the accumulated gradient."""
        self.grad = None

    def __repr__(self) -> str:
        frozen = "" if self.trainable else ", trainable=False"
        return f"Parameter(shape={self.value.shape}, dtype={self.value.dtype}{frozen})"
