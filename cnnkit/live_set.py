"""The executor's live set, followed on sizes alone: the memory a summary reports.

:func:`cnnkit.executor.run_forward` and :func:`~cnnkit.executor.run_backward` decide per call
which arrays a layer may overwrite, fuse a convolution with the ReLU after it, fold the batch
norm after a convolution into it in inference (the convolution's output buffer is then the batch
norm's output, or the ReLU's after it; the batch norm allocates nothing), drop a tensor
after its last reader (inference) and each context as backward passes its step (training).
This module walks a plan by the same rules without computing anything: every array is a
buffer with a size and the holders that keep it alive (a tensor, a context, a pending
gradient), and the live set is the sum of the buffers held. Each layer says how a call uses
memory (:meth:`cnnkit.layers.Layer.call_memory`): whether its output is its input's memory,
its workspace, what its context keeps, whether its input gradient is a view of the output's.

Sizes are float32 numbers per sample (``sizes[tensor]``) scaled by the batch; the compiled
kernels' fixed blocks (a few hundred KB per worker) are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .arithmetic import float32_bytes
from .executor import Plan, Step, fusion, handed_over, read_counts


@dataclass(frozen=True)
class Peak:
    """The largest live set in bytes and the step it happens in (its name, "" when none ran)."""

    bytes: int
    step: str


@dataclass(frozen=True)
class TrainingPeaks:
    """A training step's peaks: of activations, contexts and their gradients alone, and with
    the parameters' gradients allocated so far added (the step's whole increase in memory)."""

    activations: Peak
    total: Peak
    gradients_bytes: int


@dataclass
class _Buffers:
    """Arrays as numbered buffers: a size in bytes and how many holders keep each alive."""

    sizes: dict[int, int] = field(default_factory=dict)
    holders: dict[int, int] = field(default_factory=dict)
    live: int = 0
    #: bytes of parameter gradients allocated so far (they stay)
    gradients: int = 0
    peak: Peak = Peak(0, "")
    peak_total: Peak = Peak(0, "")

    def new(self, nbytes: int) -> int:
        number = len(self.sizes)
        self.sizes[number], self.holders[number] = nbytes, 1
        self.live += nbytes
        return number

    def hold(self, number: int) -> int:
        self.holders[number] += 1
        return number

    def drop(self, number: int) -> None:
        self.holders[number] -= 1
        if self.holders[number] == 0:
            self.live -= self.sizes[number]

    def note(self, where: str, extra: int = 0) -> None:
        """Record the live set (plus ``extra`` bytes of workspace) during the step ``where``."""
        if self.live + extra > self.peak.bytes:
            self.peak = Peak(self.live + extra, where)
        if self.live + extra + self.gradients > self.peak_total.bytes:
            self.peak_total = Peak(self.live + extra + self.gradients, where)


@dataclass
class _Forward:
    """What a forward walk leaves: each tensor's buffer, the contexts kept, and per step what
    its call did (the executor's ``values``, ``tape`` and hand-overs)."""

    values: dict[int, int]
    contexts: dict[int, list[int]] = field(default_factory=dict)
    adopted: set[int] = field(default_factory=set)          # training steps their producer computed (fused)
    memory: dict[int, object] = field(default_factory=dict)


def inference_peak(plan: Plan, sizes: dict[int, int], wanted: Sequence[int], batch: int = 1,
                   fold: bool = True) -> Peak:
    """The largest live set of an inference pass computing ``wanted``, and the step it happens in
    (``fold``: batch norm folded into the convolution before it, as ``run_forward``'s)."""
    buffers = _Buffers()
    _walk_forward(plan, sizes, wanted, frozenset(), batch, buffers, fold)
    return buffers.peak


def training_peaks(plan: Plan, sizes: dict[int, int], wanted: Sequence[int], training: frozenset[int],
                   gradient_bytes: dict[int, int], batch: int = 1, fold: bool = True) -> TrainingPeaks:
    """The live set of a training step: a forward keeping the contexts of the ``training`` steps,
    a gradient for each ``wanted`` tensor (the loss's), and backward, which drops each context
    as it passes the step and allocates a layer's parameter gradients (``gradient_bytes`` by
    ``id(layer)``) when it first reaches it. No gradient is computed for the model's inputs.
    ``fold`` folds batch norm in the steps outside ``training`` (a frozen base), as ``run_forward``."""
    buffers = _Buffers()
    walk = _walk_forward(plan, sizes, wanted, training, batch, buffers, fold)
    pending = {t: (buffers.new(_bytes(sizes[t], batch)), False) for t in dict.fromkeys(wanted)}
    buffers.note("loss")
    remaining = dict(gradient_bytes)
    on_tape = set(walk.contexts) | walk.adopted
    for position in sorted(on_tape, reverse=True):
        _step_backward(plan, plan.steps[position], walk, pending, on_tape, remaining, sizes, batch, buffers)
    return TrainingPeaks(buffers.peak, buffers.peak_total, sum(gradient_bytes.values()))


def _bytes(numbers: int, batch: int) -> int:
    return float32_bytes(numbers * batch)


def _walk_forward(plan: Plan, sizes: dict[int, int], wanted: Sequence[int], training: frozenset[int], batch: int,
                  buffers: _Buffers, fold: bool) -> _Forward:
    """Follow :func:`cnnkit.executor.run_forward`: the same order, hand-overs, fusion, folding and frees."""
    walk = _Forward(values={t: buffers.new(_bytes(sizes[t], batch)) for t in plan.inputs})
    order = plan.needed(wanted)
    running, keep = set(order), set(wanted)
    reads = read_counts(plan, order)
    only_reader = {tensor for tensor, count in reads.items() if count == 1}
    fresh: dict[int, bool] = {}
    applied: set[int] = set()   # steps their producer computed (fused or folded)
    for position in order:
        if position in applied:
            continue
        step = plan.steps[position]
        in_training = position in training
        owned = handed_over(step, fresh, only_reader, keep)
        fused = fusion(plan, step, reads, keep, training, running, fold)
        memory = step.layer.call_memory(tuple(owned) if step.layer.arity is None else owned[0], in_training)
        output = fused.output if fused is not None else step.output
        if memory.output_is_input:
            buffer = buffers.hold(walk.values[step.inputs[owned.index(True) if any(owned) else 0]])
        else:
            buffer = buffers.new(_bytes(sizes[output], batch))
        partners = fused.partners if fused is not None else ()
        applied.update(partner.position for partner in partners)
        activation = fused is not None and fused.activation is not None
        if in_training:
            walk.contexts[position] = _context(step, memory, buffer, activation, walk, batch, buffers)
            walk.memory[position] = memory
            walk.adopted.update(partner.position for partner in partners)
        buffers.note(step.name, _bytes(memory.workspace, batch))
        walk.values[output] = buffer
        fresh[output] = step.layer.fresh_output and not activation
        for tensor in step.inputs:   # inference frees a tensor after its last reader
            reads[tensor] -= 1
            if reads[tensor] == 0 and tensor not in keep:
                buffers.drop(walk.values.pop(tensor))
        if fused is not None:
            fused.read(reads)
    return walk


def _context(step: Step, memory, output: int, fused: bool, walk: _Forward, batch: int, buffers: _Buffers) -> list[int]:
    """The buffers a training step's context holds: its inputs, its output (a fused activation's
    output is the mask of the gradient), and arrays of its own."""
    held = [buffers.hold(walk.values[t]) for t in step.inputs] if memory.keeps_input else []
    if memory.keeps_output or fused:
        held.append(buffers.hold(output))
    if memory.keeps_bytes:
        held.append(buffers.new(memory.keeps_bytes * batch))
    return held


def _step_backward(plan: Plan, step: Step, walk: _Forward, pending: dict, on_tape: set[int], remaining: dict,
                   sizes: dict[int, int], batch: int, buffers: _Buffers) -> None:
    """Follow one step of :func:`cnnkit.executor.run_backward` (no input gradients wanted)."""
    def wants(tensor: int) -> bool:
        return plan.producer.get(tensor) in on_tape

    entry = pending.pop(step.output, None)
    if entry is not None:
        grad, owned = entry
        if step.position in walk.adopted:   # the producer masks the gradient as it reads it
            results = [(buffers.hold(grad), owned)]
        else:
            results = _input_gradients(step, walk.memory[step.position], grad, owned, wants, sizes, batch, buffers)
            buffers.gradients += remaining.pop(id(step.layer), 0)
        buffers.note(step.name)
        for tensor, result in zip(step.inputs, results):
            if result is not None:
                _accumulate(pending, tensor, *result, wants(tensor), step.name, buffers)
        buffers.drop(grad)
    for held in walk.contexts.pop(step.position, []):
        buffers.drop(held)


def _input_gradients(step: Step, memory, grad: int, owned: bool, wants, sizes: dict[int, int], batch: int,
                     buffers: _Buffers) -> list:
    """(buffer, fresh) of the gradient a layer's backward returns for each input, or None."""
    layer = step.layer
    if memory.grad_is_view:
        return [(buffers.hold(grad), False) for _ in step.inputs]
    if memory.grad_in_place and owned:
        return [(buffers.hold(grad), layer.fresh_input_grad)]
    if not any(wants(t) for t in step.inputs) and layer.skips_input_grad:
        return [None for _ in step.inputs]
    fresh = layer.fresh_input_grad and layer.arity is not None
    return [(buffers.new(_bytes(sizes[t], batch)), fresh) for t in step.inputs]


def _accumulate(pending: dict, tensor: int, gradient: int, fresh: bool, wanted: bool, where: str,
                buffers: _Buffers) -> None:
    """A reader's gradient for ``tensor``: kept, added into the first, or summed into a new buffer."""
    if not wanted:
        buffers.drop(gradient)
    elif tensor not in pending:
        pending[tensor] = (gradient, fresh)
    else:
        total, owned = pending[tensor]
        if not owned:
            summed = buffers.new(buffers.sizes[total])
            buffers.note(where)
            buffers.drop(total)
            total = summed
        buffers.drop(gradient)
        pending[tensor] = (total, True)
