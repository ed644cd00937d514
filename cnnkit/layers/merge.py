"""Merge layers: several tensors in, one out (a residual sum, an Inception concatenation).

They exist for graphs (``cnnkit.Model``): ``Add()([x, shortcut])``, ``Subtract()([a, b])``. Called directly they take
a list of arrays. ``Identity`` is the one-input layer that passes its input on (a named point
of a graph, or an identity shortcut that should have a name).
"""

from __future__ import annotations

import numpy as np

from ..arithmetic import CallMemory
from ..errors import ConfigError, ShapeError
from .base import Layer, as_compute_dtype


class Merge(Layer):
    """Shared checks of layers that combine two or more tensors of known shapes."""

    arity = None
    fresh_output = True

    def build(self, input_shape, rng: np.random.Generator | None = None, strict: bool = False):
        """Build for the list of input shapes; return the output shape."""
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) < 2 \
                or not all(isinstance(shape, (list, tuple)) for shape in input_shape):
            raise ShapeError(f"{self.label}: merges a list of at least two tensors; received input "
                             f"shape {input_shape!r}")
        shapes = [tuple(int(v) for v in shape) for shape in input_shape]
        self.strict = strict
        self.input_shape = shapes
        self.output_shape = tuple(self._merged_shape(shapes))
        return self.output_shape

    def _merged_shape(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        if any(shape != shapes[0] for shape in shapes):
            raise ShapeError(f"{self.label}: every input must have the same shape; received "
                             f"{[tuple(s) for s in shapes]}; a residual shortcut with other channels or "
                             f"size needs a 1x1 projection convolution")
        return shapes[0]

    def check_inputs(self, xs) -> list[np.ndarray]:
        """The input arrays, checked against the built shapes (the batch sizes must agree)."""
        if not self.built:
            raise ShapeError(f"{self.label}: call build([shape, ...]) (or use the layer in a Model) before forward")
        if not isinstance(xs, (list, tuple)) or len(xs) != len(self.input_shape):
            raise ShapeError(f"{self.label}: expected a list of {len(self.input_shape)} arrays; "
                             f"received {type(xs).__name__}")
        batch = getattr(xs[0], "shape", (None,))[0]
        arrays = []
        for index, (x, shape) in enumerate(zip(xs, self.input_shape)):
            if not isinstance(x, np.ndarray) or x.shape != (batch, *shape) or batch == 0:
                received = getattr(x, "shape", type(x).__name__)
                raise ShapeError(f"{self.label}: input {index} should have shape (B, {', '.join(map(str, shape))}) "
                                 f"with the batch of input 0 ({batch}); received {received}")
            arrays.append(as_compute_dtype(x, self.label))
        return arrays

    def activations(self) -> int:
        return int(np.prod(self.output_shape))


class Add(Merge):
    """The elementwise sum of its inputs: a residual block's ``F(x) + x``. Its gradient reaches
    every input unchanged."""

    overwrites_owned = True

    def call(self, xs, training: bool = False, *, owned=False, activation: str | None = None):
        self._refuse_activation(activation)
        xs = self.check_inputs(xs)
        owned = _owned_flags(owned, len(xs))
        dtype = np.result_type(*xs)
        # sum into an input handed over, when there is one already in the sum's dtype: no new
        # volume, and the output's dtype does not depend on what the executor handed over
        first = next((i for i, flag in enumerate(owned) if flag and xs[i].dtype == dtype), None)
        y = xs[first] if first is not None else xs[0] + xs[1]
        for index, x in enumerate(xs):
            if index == first or (first is None and index < 2):
                continue
            y += x
        return y, (_input_record(xs) if training else None)

    def call_backward(self, dy, context, *, owned: bool = False, need_input_grad: bool = True):
        batch, dtypes = context
        self.check_grad(dy, (batch, *self.output_shape))
        return _in_input_dtypes([dy] * len(dtypes), dtypes)

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        # sums into an input handed over; every input's gradient is the output's
        return CallMemory(output_is_input=any(_owned_flags(owned, len(self.input_shape))), grad_is_view=True)


class Subtract(Merge):
    """The difference of exactly two inputs, ``a - b`` (Keras's ``Subtract``, ONNX's ``Sub``):
    ``Subtract()([a, b])``. Its gradients are ``dy`` for ``a`` and ``-dy`` for ``b``."""

    def _merged_shape(self, shapes):
        if len(shapes) != 2:
            raise ShapeError(f"{self.label}: subtracts exactly two tensors (a - b); received {len(shapes)} "
                             f"of shapes {[tuple(s) for s in shapes]}; chain two Subtract layers for more")
        return super()._merged_shape(shapes)

    def call(self, xs, training: bool = False, *, owned=False, activation: str | None = None):
        self._refuse_activation(activation)
        a, b = self.check_inputs(xs)
        return a - b, (_input_record([a, b]) if training else None)

    def call_backward(self, dy, context, *, owned: bool = False, need_input_grad: bool = True):
        batch, dtypes = context
        self.check_grad(dy, (batch, *self.output_shape))
        return _in_input_dtypes([dy, np.negative(dy)], dtypes)


class Multiply(Merge):
    """The elementwise product of its inputs (a gate, as in squeeze-and-excitation)."""

    def call(self, xs, training: bool = False, *, owned=False, activation: str | None = None):
        self._refuse_activation(activation)
        xs = self.check_inputs(xs)
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y *= x
        return y, (xs if training else None)

    def call_backward(self, dy, context, *, owned: bool = False, need_input_grad: bool = True):
        xs = context
        self.check_grad(dy, (xs[0].shape[0], *self.output_shape))
        grads = []
        for index in range(len(xs)):
            grad = dy.copy()
            for other, x in enumerate(xs):
                if other != index:
                    grad *= x
            grads.append(grad)
        return _in_input_dtypes(grads, [x.dtype for x in xs])

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(keeps_input=True)


class Concatenate(Merge):
    """Inputs side by side along ``axis`` (default -1, the channels: Inception's branches).

    Every other axis must agree. ``axis`` counts the sample's axes (``-1`` or ``2`` for the
    channels of an ``(H, W, C)`` volume); the batch axis cannot be concatenated.
    """

    def __init__(self, axis: int = -1, name: str | None = None):
        super().__init__(name)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ConfigError(f"{name or 'Concatenate'}: axis must be an int; received axis={axis!r}")
        self.axis = axis

    def _merged_shape(self, shapes):
        rank = len(shapes[0])
        if not -rank <= self.axis < rank or any(len(shape) != rank for shape in shapes):
            raise ShapeError(f"{self.label}: axis={self.axis} does not fit inputs of shapes {shapes}; "
                             f"use an axis of the sample (-1: channels)")
        axis = self.axis % rank
        for shape in shapes:
            if shape[:axis] + shape[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
                raise ShapeError(f"{self.label}: inputs must agree on every axis but {self.axis}; "
                                 f"received {shapes}")
        return (*shapes[0][:axis], sum(shape[axis] for shape in shapes), *shapes[0][axis + 1:])

    def call(self, xs, training: bool = False, *, owned=False, activation: str | None = None):
        self._refuse_activation(activation)
        xs = self.check_inputs(xs)
        axis = self.axis % len(self.output_shape) + 1
        y = np.concatenate(xs, axis=axis)
        return y, (([x.shape[axis] for x in xs], _input_record(xs)) if training else None)

    def call_backward(self, dy, context, *, owned: bool = False, need_input_grad: bool = True):
        sizes, (batch, dtypes) = context
        self.check_grad(dy, (batch, *self.output_shape))
        axis = self.axis % len(self.output_shape) + 1
        bounds = np.cumsum(sizes)[:-1]
        # views of dy: nothing is copied, and the executor sees they are not fresh
        return _in_input_dtypes(np.split(dy, bounds, axis=axis), dtypes)

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(grad_is_view=True)


class Identity(Layer):
    """Passes its input on unchanged (a view): a named point in a graph, or an identity shortcut."""

    in_place = True

    def call(self, x, training: bool = False, *, owned: bool = False, activation: str | None = None):
        self._refuse_activation(activation)
        x = self.check_input(x)
        return x, (x.shape[0] if training else None)

    def call_backward(self, dy, context, *, owned: bool = False, need_input_grad: bool = True):
        self.check_grad(dy, (context, *self.output_shape))
        return dy

    def call_memory(self, owned=False, training: bool = False) -> CallMemory:
        return CallMemory(output_is_input=True, grad_is_view=True)


def _input_record(xs: list[np.ndarray]) -> tuple[int, tuple[np.dtype, ...]]:
    """What a merge's backward checks and casts by: the batch and each input's dtype."""
    return xs[0].shape[0], tuple(x.dtype for x in xs)


def _in_input_dtypes(grads: list[np.ndarray], dtypes) -> list[np.ndarray]:
    """Each input's gradient in that input's dtype (inputs of mixed dtypes merge in the wider one)."""
    return [grad if grad.dtype == dtype else grad.astype(dtype) for grad, dtype in zip(grads, dtypes)]


def _owned_flags(owned, count: int) -> tuple[bool, ...]:
    """One hand-over flag per input (a single bool applies to all)."""
    if isinstance(owned, (list, tuple)):
        return tuple(bool(flag) for flag in owned)
    return (bool(owned),) * count

