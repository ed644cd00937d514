"""The one executor: runs any graph of layers forward and backward from a plan made once.

A :class:`Plan` is the graph as positions: the steps in topological order, which tensors each
reads, who reads each tensor, and which tensors are the model's inputs. Every way of running a
model goes through :func:`run_forward` and :func:`run_backward`: ``forward``, ``backward``,
``predict``, ``features``, ``train_step`` and so ``fit``. A ``Sequential`` is a plan that is a
chain.

Per call, from the reads of each tensor, the executor decides what the layers may not decide
alone (they hold no flags set by their neighbours):

- **In place.** A layer that can (``Layer.overwrites_owned``) may overwrite its input
  (``call(owned=True)``) only when the input is
  a fresh output of its producer (``Layer.fresh_output``: not kept in the producer's context),
  this step is its only reader in the whole pass, and the caller does not want it back. Being
  the *last* reader is not enough: an earlier reader may keep the array in its training
  context (a convolution keeps its input) or may have returned a view of it (``Identity``,
  ``Flatten``) that a later step reads. The caller's arrays are never written. Backward
  likewise hands over a gradient that one consumer made fresh.
- **Fusion.** CONV -> RELU: when a step's output has one reader, a layer that is the
  activation the step can apply (``fused_as`` in ``fusable_activations``), both in the same
  mode and the output is not wanted, the step applies it as it writes (``call(activation=)``)
  and the activation step adopts the result; its backward passes the gradient through, since
  the producer's backward masks it as it reads it.
- **Memory.** Each step's context (what its backward needs) is the step's own, kept on a tape
  in training and dropped as backward passes the step. In inference a tensor is dropped after
  its last reader.
- **Gradients** from several readers of a tensor are summed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ShapeError


class _Adopted:
    """Tape entry of an activation step whose producer applied it (fusion)."""

    def __repr__(self) -> str:
        return "ADOPTED"


ADOPTED = _Adopted()


@dataclass(frozen=True)
class Step:
    """One node of the graph: ``layer`` applied to the tensors ``inputs``, giving ``output``."""

    position: int
    layer: object
    inputs: tuple[int, ...]
    output: int
    name: str


@dataclass
class Plan:
    """The graph as positions, made once when the model is built.

    Tensors are numbered: ``inputs`` are the model's inputs, each step produces ``output``.
    """

    steps: list[Step]
    inputs: list[int]
    outputs: list[int]
    #: tensor -> positions of the steps that read it (a step reading it twice appears twice)
    readers: dict[int, list[int]] = field(init=False)
    #: tensor -> position of the step that computes it (model inputs have none)
    producer: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.readers = {}
        self.producer = {}
        for step in self.steps:
            self.producer[step.output] = step.position
            for tensor in step.inputs:
                self.readers.setdefault(tensor, []).append(step.position)

    def needed(self, tensors: Sequence[int]) -> list[int]:
        """Positions of the steps that computing ``tensors`` needs, in order."""
        needed: set[int] = set()
        pending = [t for t in tensors if t in self.producer]
        while pending:
            position = self.producer[pending.pop()]
            if position not in needed:
                needed.add(position)
                pending.extend(t for t in self.steps[position].inputs if t in self.producer)
        return sorted(needed)

    def ancestors(self, position: int) -> set[int]:
        """The positions of a step and every step it depends on."""
        return set(self.needed([self.steps[position].output]))

    def layer_steps(self) -> dict[int, list[int]]:
        """id(layer) -> the positions where it runs (a shared layer: several)."""
        where: dict[int, list[int]] = {}
        for step in self.steps:
            where.setdefault(id(step.layer), []).append(step.position)
        return where


@dataclass
class Tape:
    """What a training forward leaves for backward: each training step's context."""

    contexts: dict[int, object] = field(default_factory=dict)
    #: the steps that ran, in order (the fused activations included)
    ran: list[int] = field(default_factory=list)


def run_forward(plan: Plan, inputs: Sequence[np.ndarray], wanted: Sequence[int],
                training: frozenset[int] | set[int] = frozenset(), tape: Tape | None = None) -> list[np.ndarray]:
    """The arrays of the tensors ``wanted``, computing only the steps they need.

    Steps whose position is in ``training`` run in training mode and, when ``tape`` is given,
    leave their contexts on it. ``inputs`` (one array per model input) are never written.
    """
    if len(inputs) != len(plan.inputs):
        raise ShapeError(f"expected {len(plan.inputs)} input arrays, one per model input; received {len(inputs)}")
    values = dict(zip(plan.inputs, inputs))
    for tensor in wanted:
        if tensor not in values and tensor not in plan.producer:
            raise ShapeError(f"tensor {tensor} is not computed by this model")
    order = plan.needed(wanted)
    running = set(order)
    reads = read_counts(plan, order)
    only_reader = {tensor for tensor, count in reads.items() if count == 1}
    keep = set(wanted)
    fresh: dict[int, bool] = {}
    adopted: set[int] = set()
    for position in order:
        if position in adopted:
            continue
        step = plan.steps[position]
        layer, in_training = step.layer, position in training
        owned = handed_over(step, fresh, only_reader, keep)
        x = [values[t] for t in step.inputs] if layer.arity is None else values[step.inputs[0]]
        hand_over = tuple(owned) if layer.arity is None else owned[0]
        partner = fusion_partner(plan, step, reads, keep, training, running)
        options = {"owned": hand_over} if layer.overwrites_owned else {}
        if partner is not None:
            y, context = layer.call(x, in_training, activation=partner.layer.fused_as, **options)
            adopted.add(partner.position)
            output, fresh_output = partner.output, False
            if tape is not None and in_training:
                tape.contexts[partner.position] = ADOPTED
        else:
            y, context = layer.call(x, in_training, **options)
            output, fresh_output = step.output, layer.fresh_output
        values[output], fresh[output] = y, fresh_output
        if tape is not None and in_training:
            tape.contexts[position] = context
        del context
        for tensor in step.inputs:   # inference frees a tensor after its last reader
            reads[tensor] -= 1
            if reads[tensor] == 0 and tensor not in keep:
                values.pop(tensor, None)
        if partner is not None:
            reads[step.output] -= 1
    if tape is not None:
        tape.ran = [p for p in order if p in tape.contexts]
    return [values[t] for t in wanted]


def read_counts(plan: Plan, order: list[int]) -> dict[int, int]:
    """How many times the steps at ``order`` read each tensor."""
    reads: dict[int, int] = {}
    for position in order:
        for tensor in plan.steps[position].inputs:
            reads[tensor] = reads.get(tensor, 0) + 1
    return reads


def handed_over(step: Step, fresh: dict[int, bool], only_reader: set[int], keep: set[int]) -> list[bool]:
    """Per input of ``step``: may the layer overwrite it? Only a fresh output of its producer
    (not kept in the producer's context) that this step alone reads in the whole pass, and that
    the caller does not want back."""
    return [fresh.get(t, False) and t in only_reader and t not in keep for t in step.inputs]


def fusion_partner(plan: Plan, step: Step, reads: dict[int, int], keep: set[int], training,
                   running: set[int]) -> Step | None:
    """The activation step that ``step`` can compute as it writes its output, or None: its
    output's one remaining reader, an activation the step can apply, in the same mode, and the
    output not wanted by the caller."""
    activations = step.layer.fusable_activations
    if not activations or reads.get(step.output, 0) != 1 or step.output in keep:
        return None
    reader = next(p for p in plan.readers[step.output] if p in running)
    partner = plan.steps[reader]
    if partner.layer.arity != 1 or partner.layer.fused_as not in activations \
            or (reader in training) != (step.position in training):
        return None
    return partner


def run_backward(plan: Plan, tape: Tape, gradients: dict[int, np.ndarray], input_gradients: bool = True,
                 on_layer_done: Callable[[object], None] | None = None) -> list[np.ndarray | None]:
    """Back-propagate ``gradients`` (tensor -> gradient of the loss with respect to it, usually
    the outputs') through the steps on ``tape``, last first; return the gradient of each model
    input (None for inputs no gradient reaches, and for all when ``input_gradients`` is False).

    Each context is dropped as its step is passed. ``on_layer_done(layer)`` is called when the
    last step of a layer is done, its parameters' gradients complete (data-parallel training
    sends them then). The arrays in ``gradients`` are never written, and the input gradients
    returned share memory with none of them nor with each other.
    """
    pending: dict[int, tuple[np.ndarray, bool]] = {t: (g, False) for t, g in gradients.items()}
    inputs = set(plan.inputs)
    on_tape = set(tape.contexts)
    remaining: dict[int, int] = {}
    for position in on_tape:
        key = id(plan.steps[position].layer)
        remaining[key] = remaining.get(key, 0) + 1

    def wants(tensor: int) -> bool:
        return plan.producer.get(tensor) in on_tape or (tensor in inputs and input_gradients)

    for position in sorted(on_tape, reverse=True):
        step = plan.steps[position]
        context = tape.contexts.pop(position)
        entry = pending.pop(step.output, None)
        if entry is not None:
            _step_backward(step, context, entry, wants, pending)
        del context, entry
        key = id(step.layer)
        remaining[key] -= 1
        if remaining[key] == 0 and on_layer_done is not None:
            on_layer_done(step.layer)
    return [_handed_over(pending[t]) if t in pending and input_gradients else None for t in plan.inputs]


def _handed_over(entry: tuple[np.ndarray, bool]) -> np.ndarray:
    """An input's gradient as the caller's own array: one nobody else holds is given as it is;
    otherwise (the caller's output gradient passed on by an ``Add``, or one array for two inputs)
    a copy, so writing into one result never changes another or the caller's gradient."""
    gradient, owned = entry
    return gradient if owned else gradient.copy()


def _step_backward(step: Step, context, entry, wants, pending) -> None:
    grad, owned = entry
    layer = step.layer
    if context is ADOPTED:   # the producer masks the gradient as it reads it
        results, fresh = [grad], [owned]
    else:
        options = {"owned": owned} if layer.overwrites_owned else {}
        if layer.skips_input_grad:
            options["need_input_grad"] = any(wants(t) for t in step.inputs)
        result = layer.call_backward(grad, context, **options)
        if layer.arity is None:
            results, fresh = list(result), [False] * len(step.inputs)
        else:
            results, fresh = [result], [layer.fresh_input_grad]
    for tensor, gradient, is_fresh in zip(step.inputs, results, fresh):
        if gradient is not None and wants(tensor):
            _accumulate(pending, tensor, gradient, is_fresh)


def _accumulate(pending: dict, tensor: int, gradient: np.ndarray, fresh: bool) -> None:
    """Add a reader's gradient for ``tensor``: the first is kept, the next are summed into a
    fresh array (or into the first, when nobody else holds it)."""
    if tensor not in pending:
        pending[tensor] = (gradient, fresh)
        return
    total, owned = pending[tensor]
    if owned:
        total += gradient
    else:
        total = total + gradient
    pending[tensor] = (total, True)
