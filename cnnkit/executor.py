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
- **Folding.** CONV -> BN (-> RELU) in inference: when a step that can fold an affine map into
  its weights (``folds_affine``: a convolution without an activation of its own) runs in
  inference, its output is not wanted and has one reader, a layer that is an affine map in
  inference (``affine_in_inference``: batch norm) also in inference, the step computes the pair
  as one convolution with folded weights (``call(fold=layer)``) and the batch norm step adopts
  the result without running. The batch norm's output may then fuse the activation after it by
  the rule above (conv -> BN -> ReLU in one pass, as in every ResNet and MobileNet block). Never
  in a training step, not even for batch norm with frozen statistics: the gradient of the pair
  is not the folded convolution's. ``run_forward(..., fold=False)`` (``cnnkit.runtime(
  fold_batch_norm=False)`` for a model's entry points) runs the pair as two steps. The folded
  numbers equal the pair's to float32 rounding, not bit for bit.
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
                training: frozenset[int] | set[int] = frozenset(), tape: Tape | None = None,
                fold: bool = True) -> list[np.ndarray]:
    """The arrays of the tensors ``wanted``, computing only the steps they need.

    Steps whose position is in ``training`` run in training mode and, when ``tape`` is given,
    leave their contexts on it. ``inputs`` (one array per model input) are never written.
    ``fold``: fold batch norm into the convolution before it in inference steps (see the module doc).
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
        fused = fusion(plan, step, reads, keep, training, running, fold)
        options = {"owned": hand_over} if layer.overwrites_owned else {}
        if fused is not None:
            y, context = layer.call(x, in_training, **fused.options(), **options)
            adopted.update(partner.position for partner in fused.partners)
            output, fresh_output = fused.output, fused.activation is None and layer.fresh_output
            if tape is not None and in_training:
                for partner in fused.partners:
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
        if fused is not None:
            fused.read(reads)
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


@dataclass(frozen=True)
class Fusion:
    """The steps after a step that it computes in its own call: an affine step folded into its
    weights (``folded``, batch norm in inference) and an activation applied as it writes
    (``activation``), each adopting the result instead of running."""

    folded: Step | None
    activation: Step | None

    @property
    def partners(self) -> tuple[Step, ...]:
        """The adopting steps, in order."""
        return tuple(step for step in (self.folded, self.activation) if step is not None)

    @property
    def output(self) -> int:
        """The tensor the call gives: the last adopting step's output."""
        return self.partners[-1].output

    def options(self) -> dict:
        """The producer's ``call`` arguments that ask for it."""
        options = {"fold": self.folded.layer} if self.folded is not None else {}
        if self.activation is not None:
            options["activation"] = self.activation.layer.fused_as
        return options

    def read(self, reads: dict[int, int]) -> None:
        """Count the reads of the tensors the adopting steps would have read (never computed)."""
        for step in self.partners:
            reads[step.inputs[0]] -= 1


def fusion(plan: Plan, step: Step, reads: dict[int, int], keep: set[int], training, running: set[int],
           fold: bool = True) -> Fusion | None:
    """What ``step`` computes besides its own layer (None: nothing): the affine step it folds
    (``fold``, both in inference, its output's one remaining reader and not wanted), then the
    activation after it or after the folded step (one reader, in the same mode, not wanted)."""
    layer, in_training = step.layer, step.position in training
    folded = None
    if fold and not in_training and layer.folds_affine:
        reader = sole_reader(plan, step.output, reads, keep, running)
        if reader is not None and reader.layer.arity == 1 and reader.layer.affine_in_inference \
                and reader.position not in training:
            folded = reader
    activation = None
    if layer.fusable_activations:
        reader = sole_reader(plan, (folded or step).output, reads, keep, running)
        if reader is not None and reader.layer.arity == 1 and reader.layer.fused_as in layer.fusable_activations \
                and (reader.position in training) == in_training:
            activation = reader
    return Fusion(folded, activation) if folded is not None or activation is not None else None


def sole_reader(plan: Plan, tensor: int, reads: dict[int, int], keep: set[int], running: set[int]) -> Step | None:
    """The step that alone reads ``tensor`` in what remains of the pass, unless the caller wants it."""
    if reads.get(tensor, 0) != 1 or tensor in keep:
        return None
    return plan.steps[next(p for p in plan.readers[tensor] if p in running)]


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
