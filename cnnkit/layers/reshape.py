"""`Reshape` and `Permute`: a sample's numbers rearranged, none changed (Keras's two layers).

Neither has parameters or multiply-adds. In the receptive field a layer that keeps the (H, W)
grid keeps the field (Permute swapping H and W swaps it); one that rearranges the grid is
treated as :class:`~cnnkit.layers.Flatten` is: after it, each unit stands for the whole input.
"""

from __future__ import annotations

import math

import numpy as np

from ..arithmetic import CallMemory
from ..errors import ConfigError, ShapeError
from .base import Layer


class Reshape(Layer):
    """Give each sample the shape ``target_shape`` (Keras's ``Reshape``), a view of the input.

    Args:
        target_shape: the per-sample shape, batch excluded, a tuple of ints >= 1 of which at
            most one may be ``-1``: that size is inferred from the sample's size.

    Input ``(B, *input_shape)``, output ``(B, *target_shape)``, the numbers in the same
    (row-major, channels-last) order. Backward reshapes the gradient back (a view).
    """

    in_place = True

    def __init__(self, target_shape, name: str | None = None):
        super().__init__(name)
        self.target_shape = tuple(target_shape) if isinstance(target_shape, (list, tuple)) else target_shape

    def _build(self, input_shape, rng):
        target = self.target_shape
        if (not isinstance(target, tuple) or not target
                or not all(isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1) for v in target)
                or target.count(-1) > 1):
            raise ConfigError(f"{self.label}: target_shape must be a non-empty tuple of ints >= 1 with at most one "
                              f"-1 (inferred), the shape of one sample without the batch; received "
                              f"target_shape={self.target_shape!r}")
        size, known = math.prod(input_shape), math.prod(v for v in target if v != -1)
        if -1 in target:
            if size % known:
                raise ShapeError(f"{self.label}: cannot infer the -1 of target_shape={target!r}: the input "
                                 f"{input_shape} has {size} numbers per sample, not a multiple of {known}")
            target = tuple(size // known if v == -1 else v for v in target)
        if math.prod(target) != size:
            raise ShapeError(f"{self.label}: target_shape={self.target_shape!r} holds {math.prod(target)} numbers "
                             f"per sample, but the input {input_shape} has {size}; the two must hold as many")
        return target

    def receptive_field(self, field):
        return _grid_field(self.input_shape, self.output_shape, field)

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """A view of ``x`` when it is contiguous, else a copy; the context is the batch size."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        return x.reshape(x.shape[0], *self.output_shape), (x.shape[0] if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """The gradient in the input's shape (a view of ``dy``)."""
        self.check_grad(dy, (context, *self.output_shape))
        return dy.reshape(dy.shape[0], *self.input_shape)

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(output_is_input=True, grad_is_view=True)


class Permute(Layer):
    """Reorder the axes of each sample (Keras's ``Permute``).

    Args:
        dims: a permutation of ``1..rank`` (1-based, the batch axis 0 excluded and never moved):
            output axis ``i`` is input axis ``dims[i - 1]``. ``(2, 1, 3)`` swaps the height and
            width of an ``(H, W, C)`` volume, ``(3, 1, 2)`` makes it ``(C, H, W)``.

    The output is a new contiguous array (the layers after it read rows in memory order);
    backward applies the inverse permutation to the gradient.
    """

    fresh_output = True
    fresh_input_grad = True

    def __init__(self, dims, name: str | None = None):
        super().__init__(name)
        self.dims = tuple(dims) if isinstance(dims, (list, tuple)) else dims

    def _build(self, input_shape, rng):
        rank = len(input_shape)
        dims = self.dims
        if (not isinstance(dims, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in dims)
                or sorted(dims) != list(range(1, rank + 1))):
            raise ConfigError(f"{self.label}: dims must be a permutation of 1..{rank} (1-based axes of one sample, "
                              f"the batch excluded) for the input {input_shape}; received dims={self.dims!r}")
        return tuple(input_shape[v - 1] for v in dims)

    def receptive_field(self, field):
        if len(self.input_shape) == 3 and self.dims[:2] == (2, 1):
            return field[1], field[0]
        return _grid_field(self.input_shape, self.output_shape if self.dims[:2] == (1, 2) else None, field)

    def call(self, x: np.ndarray, training: bool = False, *, owned: bool = False, activation: str | None = None):
        """The permuted sample as a new array; the context is the batch size."""
        self._refuse_activation(activation)
        x = self.check_input(x)
        return np.ascontiguousarray(x.transpose(0, *self.dims)), (x.shape[0] if training else None)

    def call_backward(self, dy: np.ndarray, context, *, owned: bool = False, need_input_grad: bool = True):
        """The gradient with the axes put back (a new array)."""
        self.check_grad(dy, (context, *self.output_shape))
        inverse = np.argsort(self.dims) + 1
        return np.ascontiguousarray(dy.transpose(0, *inverse))


def _grid_field(input_shape, output_shape, field):
    """The field after a rearranging layer: unchanged when an ``(H, W, C)`` input keeps its
    ``(H, W)`` grid in the output (``output_shape`` None: it does not), else the whole input's."""
    if len(input_shape) != 3:
        return field
    if output_shape is not None and len(output_shape) == 3 and output_shape[:2] == input_shape[:2]:
        return field
    h, w, _ = input_shape
    return field[0].covering(h), field[1].covering(w)
