"""Symbolic tensors: how the functional API records a graph of layers (the Keras way).

``x = cnnkit.Input((32, 32, 3))`` is a symbolic tensor: a shape and where it comes from, no
numbers. Calling a layer on one (``Conv2d(16, 3)(x)``) records a :class:`Node` (the layer
applied to those inputs) and returns the node's output tensor. ``cnnkit.Model(inputs,
outputs)`` then finds every node between them (:func:`trace`) and plans their execution
(:mod:`cnnkit.executor`). The same layer object called twice makes two nodes that share its
weights.

A layer called on a symbolic tensor is built for its shape at once, as a description only
(:func:`cnnkit.parameter.describing_only`): the weights are drawn when the ``Model`` is made,
from the model's seed, in the order of its nodes.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from .errors import ConfigError, ShapeError
from .parameter import describing_only


class SymbolicTensor:
    """The output of a node (or a model input): a per-sample shape and its producer."""

    __slots__ = ("shape", "node", "name")

    def __init__(self, shape: tuple[int, ...], node: "Node | None", name: str | None = None):
        self.shape = tuple(shape)
        #: the node that computes this tensor; None for a model input
        self.node = node
        self.name = name

    def __repr__(self) -> str:
        source = self.node.layer.label if self.node is not None else "input"
        return f"SymbolicTensor(shape={self.shape}, from={self.name or source!r})"


class Node:
    """One application of a layer to input tensors; its output is :attr:`output`."""

    __slots__ = ("layer", "inputs", "output")

    def __init__(self, layer, inputs: Sequence[SymbolicTensor], output_shape: tuple[int, ...]):
        self.layer = layer
        self.inputs = tuple(inputs)
        self.output = SymbolicTensor(output_shape, self)


def Input(shape: Sequence[int], name: str | None = None) -> SymbolicTensor:   # noqa: N802 (Keras's name)
    """A model input: one sample's shape, e.g. ``(224, 224, 3)`` for an image, channels last."""
    try:
        dims = tuple(_size(v) for v in shape)
    except TypeError:
        raise ShapeError(f"Input: shape must be a tuple of ints such as (224, 224, 3); received {shape!r}") from None
    if not dims or any(v < 1 for v in dims):
        raise ShapeError(f"Input: shape must be positive sizes such as (224, 224, 3); received {shape!r}")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"Input: name must be a string; received name={name!r}")
    return SymbolicTensor(dims, None, name)


def _size(value) -> int:
    """A size given as an int (NumPy's too): a float, a string or a bool is not quietly converted."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a size")
    return operator.index(value)


def is_symbolic(x) -> bool:
    """Is ``x`` a symbolic tensor, or a non-empty list of them (a merge layer's inputs)?"""
    if isinstance(x, SymbolicTensor):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(v, SymbolicTensor) for v in x)


def connect(layer, x) -> SymbolicTensor:
    """Record ``layer`` applied to the symbolic tensor(s) ``x``; return its output tensor.

    An unbuilt layer is built for the inputs' shapes (as a description: no weights yet); a built
    one (a layer used a second time, or taken from another model) must receive the shapes it
    was built for.
    """
    inputs = list(x) if isinstance(x, (list, tuple)) else [x]
    if layer.arity is not None and len(inputs) != layer.arity:
        raise ShapeError(f"{layer.label}: takes {layer.arity} input tensor(s); received {len(inputs)}; "
                         f"combine several with Add, Concatenate or Multiply")
    shape = inputs[0].shape if layer.arity == 1 else [t.shape for t in inputs]
    if not layer.built:
        with describing_only():
            layer.build(shape)
    elif _as_built(shape) != _as_built(layer.input_shape):
        raise ShapeError(f"{layer.label}: is built for input shape {layer.input_shape} and shares its weights "
                         f"wherever it is used; received a tensor of shape {shape}")
    return Node(layer, inputs, layer.output_shape).output


def _as_built(shape):
    return [tuple(s) for s in shape] if shape and isinstance(shape[0], (list, tuple)) else tuple(shape)


def trace(inputs: Sequence[SymbolicTensor], outputs: Sequence[SymbolicTensor], model: str) -> list[Node]:
    """Every node between ``inputs`` and ``outputs``, in a topological order (producers first,
    otherwise in the order they were called). Raise when an output depends on a tensor that is
    not one of the inputs."""
    input_ids = {id(t) for t in inputs}
    order: list[Node] = []
    state: dict[int, int] = {}   # id(node) -> 1 while visiting, 2 when done
    for output in outputs:
        _visit(output, input_ids, order, state, model)
    return order


def _visit(tensor: SymbolicTensor, input_ids: set[int], order: list[Node], state: dict, model: str) -> None:
    # an explicit stack: a chain of thousands of layers must not hit Python's recursion limit
    stack = [(tensor, False)]
    while stack:
        current, expanded = stack.pop()
        if id(current) in input_ids:
            continue
        node = current.node
        if node is None:
            raise ConfigError(f"{model}: an output depends on input {current!r}, which is not among the model's "
                              f"inputs; pass it in Model(inputs=[...])")
        if state.get(id(node)) == 2:
            continue
        if expanded:
            state[id(node)] = 2
            order.append(node)
            continue
        state[id(node)] = 1
        stack.append((current, True))
        for source in reversed(node.inputs):
            if source.node is not None and state.get(id(source.node)) == 1:
                raise ConfigError(f"{model}: the graph has a cycle through {node.layer.label}")
            stack.append((source, False))
