"""Where transfer cuts a network: its classifier, the node named as a cut, the block outputs.

A node is a tensor of the model's plan, named as in :meth:`cnnkit.Model.node_names`: in a
``Sequential`` each layer's output is the node of the same name; in a graph a layer's second
use is ``name:1``. Everything here reads the plan and works the same on both; on a chain it
gives the answers the positions of the layers gave before graphs existed.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..executor import Plan, Step
from ..layers import (AvgPool2d, Dense, Dropout, Flatten, GlobalAvgPool2d, GlobalMaxPool2d, LeakyReLU, MaxPool2d,
                      Maxout, Merge, PReLU, ReLU, Sigmoid, Tanh)

POOLING = (MaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d)
ACTIVATIONS = (ReLU, LeakyReLU, PReLU, Sigmoid, Tanh, Maxout)


def node_step(model, name: str, argument: str = "layer") -> Step:
    """The step that computes the node ``name`` (a model input has none and is refused)."""
    tensor = model.tensor(name)
    position = model.plan.producer.get(tensor)
    if position is None:
        raise ConfigError(f"{model.name}: {argument}={name!r} is the model's input, where no layer has run; "
                          f"name a node after it, one of {model.node_names()[len(model.plan.inputs):]}")
    return model.plan.steps[position]


def one_input_one_output(model) -> None:
    """Refuse a model that does not map one image to one prediction: transfer trains on images and
    labels, and replaces the classifier of the one output."""
    names = model.node_names()
    for role, tensors in (("inputs", model.plan.inputs), ("outputs", model.plan.outputs)):
        if len(tensors) != 1:
            raise ConfigError(f"{model.name}: transfer needs a model with one input and one output; this one has "
                              f"{role} {[names[t] for t in tensors]}; make one with cnnkit.Model(input, output) "
                              f"from its nodes")


def classifier(model) -> Step:
    """The classifier: the last ``Dense`` node the model's output depends on."""
    one_input_one_output(model)
    plan = model.plan
    for position in reversed(plan.needed(plan.outputs)):
        if isinstance(plan.steps[position].layer, Dense):
            return plan.steps[position]
    raise ConfigError(f"{model.name}: transfer needs a classifier (a Dense layer) to replace; the model has "
                      f"none; layers are {model.layer_names()}")


def cut_step(model, layer: str | None, argument: str = "layer") -> Step | None:
    """The step of the node named as a cut (None for None); the node must not depend on the classifier."""
    if layer is None:
        return None
    step = node_step(model, layer, argument)
    head = classifier(model)
    if head.position in model.plan.ancestors(step.position):
        raise ConfigError(f"{model.name}: {argument}={layer!r} is the classifier or above it; name a layer below "
                          f"{head.name!r}, e.g. one of {feature_layers(model)}")
    return step


def feature_layers(model) -> list[str]:
    """Block outputs worth reading features from, shallow to deep: every pooling node and, for each
    hidden ``Dense`` node, the activation after it (``relu6``/``relu7`` in VGG16, ``relu_fc1`` in
    ``vgg_small``); in a graph also each merge (``Add``, ``Concatenate``, ``Multiply``), or the
    activation after it (a residual block's output). Only nodes that every path from the input to
    the classifier passes are block outputs: a pooling inside one branch of a block is not.
    Nothing at or above the classifier is included."""
    plan = model.plan
    head = classifier(model)
    below = plan.ancestors(head.position)
    names = []
    for position in _on_every_path(plan, sorted(below)):
        step = plan.steps[position]
        after = _only_reader(plan, step, below - {head.position})
        if isinstance(step.layer, POOLING):
            names.append(step.name)
        elif isinstance(step.layer, Dense) and position != head.position:
            activation = after is not None and not isinstance(after.layer, (Dense, Dropout, Flatten))
            names.append(after.name if activation else step.name)
        elif isinstance(step.layer, Merge):
            names.append(after.name if after is not None and isinstance(after.layer, ACTIVATIONS) else step.name)
    return names


def _only_reader(plan: Plan, step: Step, among: set[int]) -> Step | None:
    """The one step that reads ``step``'s output, when there is exactly one and it is ``among``."""
    readers = plan.readers.get(step.output, [])
    return plan.steps[readers[0]] if len(readers) == 1 and readers[0] in among else None


def _on_every_path(plan: Plan, positions: list[int]) -> list[int]:
    """The steps among ``positions`` (a step and all its ancestors, in order) that every path from
    the inputs to the last of them passes through.

    In topological order a step is on every path exactly when no edge jumps over it: no tensor made
    before it (or a model input) is read after it. A chain passes through all of its steps.
    """
    kept = set(positions)

    def last_reader(tensor: int) -> int:
        return max((r for r in plan.readers.get(tensor, []) if r in kept), default=-1)

    reach = max((last_reader(t) for t in plan.inputs), default=-1)
    passed = []
    for position in positions:
        if reach <= position:
            passed.append(position)
        reach = max(reach, last_reader(plan.steps[position].output))
    return passed
