"""Model surgery for transfer learning: copy, cut at a named node, new head, re-initialise.

Every function returns a new model rebuilt from the source's architecture data (``get_config``), so
the source model is never modified: a :class:`~cnnkit.model.Sequential` gives a ``Sequential``
(its chain format), any other :class:`~cnnkit.model.Model` a ``Model`` (the graph format). That
data carries each layer's ``trainable`` flags and batch norm's ``frozen_stats``, so copies keep
what is frozen; a new classifier is trainable, and :func:`reinitialised` starts every layer afresh.
Nodes are named as in :meth:`~cnnkit.model.Model.node_names` (see :mod:`cnnkit.transfer.nodes`).
"""

from __future__ import annotations

import copy

from ..errors import ConfigError
from ..layers import Dense, Flatten, Layer, Softmax
from ..model import Model, Sequential
from .nodes import classifier, cut_step, node_step


def layer_configs(model: Model) -> list[dict]:
    """The ``{"class", "config"}`` entries of every layer (deep copies, safe to edit)."""
    return copy.deepcopy(model.get_config()["layers"])


def copy_model(model: Model, config: dict | None = None, seed: int | None = None,
               keep_weights: bool = True) -> Model:
    """A new model from ``config`` (default: the source's architecture), weights copied where the names
    and shapes match."""
    config = copy.deepcopy(config if config is not None else model.get_config())
    if seed is not None:
        config["seed"] = seed
    clone = Model.from_config(config)   # a chain's config gives a Sequential, a graph's a Model
    if keep_weights:
        target = clone.state_dict()
        clone.load_state_dict({k: v for k, v in model.state_dict().items()
                               if k in target and target[k].shape == v.shape}, strict=False)
    return clone


def truncate(model: Model, layer: str) -> Model:
    """The network up to and including node ``layer``, with its weights: a fixed feature extractor.
    In a graph that is every node ``layer`` depends on; the rest is left out."""
    step = node_step(model, layer)
    if isinstance(model, Sequential):
        return copy_model(model, {**model.get_config(), "layers": layer_configs(model)[:step.position + 1]})
    return copy_model(_view(model, step))


def _view(model: Model, step) -> Model:
    """The part of ``model`` that computes ``step``'s node, as a model sharing the source's layers
    (nothing is drawn or copied: a step of :func:`truncate`, which copies it)."""
    needed = model.plan.needed([step.output])
    read = {tensor for position in needed for tensor in model.plan.steps[position].inputs}
    inputs = [symbolic for number, symbolic in zip(model.plan.inputs, model.inputs) if number in read]
    view = Model(inputs if len(inputs) > 1 else inputs[0], model.nodes[step.position].output, name=model.name,
                 seed=model.seed, strict=model.strict)
    view.meta = model.meta
    return view


def _appended(config: dict, entries: list[dict]) -> dict:
    """``config`` with the layers ``entries`` applied one after another to its output."""
    config = copy.deepcopy(config)
    config["layers"] += copy.deepcopy(entries)
    if "nodes" in config:   # a graph: each new layer reads the node before it; the last is the output
        [source] = config["outputs"]
        for entry in entries:
            config["nodes"].append({"layer": entry["config"]["name"], "inputs": [source]})
            source = entry["config"]["name"]
        config["outputs"], config["several_outputs"] = [source], False
    return config


def _new_head_config(model: Model, num_classes: int) -> tuple[dict, str]:
    head = classifier(model).layer
    config = copy.deepcopy(model.get_config())
    entry = config["layers"][model.index(head.name)]["config"]
    entry["units"] = int(num_classes)
    entry["trainable"] = True   # a new classifier learns, whatever the old one did
    output = model.plan.steps[model.plan.producer[model.plan.outputs[0]]].layer
    if not isinstance(output, Softmax):
        config = _appended(config, [{"class": "Softmax", "config": {"name": _free_name(model, "prob")}}])
    return config, head.name


def with_new_head(model: Model, num_classes: int, seed: int = 0, class_names: list[str] | None = None,
                  at: str | None = None) -> Model:
    """The model with a freshly initialised classifier of ``num_classes`` units and a final softmax;
    every other weight is copied.

    Args:
        at: a node below the classifier to put the new head on instead: the model is cut there
            (:func:`truncate`), a volume flattened, and ``Dense(num_classes, name="head")`` and a
            softmax ``prob`` follow. By default the classifier itself is replaced (same name).
        seed: draws the new classifier's weights.
    """
    _check_classes(num_classes)
    if at is not None:
        cut_step(model, at, "at")
        clone = compose(truncate(model, at), [Dense(num_classes, name="head"), Softmax(name="prob")], seed=seed)
        _set_classes(clone, num_classes, class_names)
        return clone
    config, head = _new_head_config(model, num_classes)
    clone = copy_model(model, config, seed=seed, keep_weights=False)
    source = model.state_dict()
    clone.load_state_dict({k: v for k, v in source.items() if not k.startswith(head + ".")}, strict=False)
    _set_classes(clone, num_classes, class_names)
    return clone


def reinitialised(model: Model, num_classes: int, seed: int = 0,
                  class_names: list[str] | None = None) -> Model:
    """The same architecture (with a ``num_classes`` classifier), every weight drawn anew from ``seed``,
    every layer trainable and batch norm learning its statistics: a model to train from scratch."""
    _check_classes(num_classes)
    config, _ = _new_head_config(model, num_classes)
    for entry in config["layers"]:
        entry["config"]["trainable"] = True
        if "frozen_stats" in entry["config"]:
            entry["config"]["frozen_stats"] = False
    clone = copy_model(model, config, seed=seed, keep_weights=False)
    _set_classes(clone, num_classes, class_names)
    return clone


def compose(extractor: Model, classifier: list[Layer], name: str | None = None, seed: int | None = None) -> Model:
    """``extractor`` followed by ``classifier`` layers (built here) as one model; weights are copied,
    the classifier's drawn from ``seed`` (default: the extractor's).

    A volume output gets a ``Flatten`` before the classifier.
    """
    taken = set(extractor.layer_names()) | set(extractor.node_names())
    extra = ([Flatten(name=_unique("features_flatten", taken))] if len(extractor.output_shape) > 1 else [])
    entries = []
    for layer in extra + list(classifier):
        layer.name = _unique(layer.name or type(layer).__name__.lower(), taken)
        taken.add(layer.name)
        entries.append({"class": type(layer).__name__, "config": layer.get_config()})
    model = copy_model(extractor, _appended(extractor.get_config(), entries), seed=seed)
    if name is not None:
        model.name = name
    return model


def _unique(name: str, taken: set[str]) -> str:
    candidate, count = name, 1
    while candidate in taken:
        count += 1
        candidate = f"{name}_{count}"
    return candidate


def _free_name(model: Model, name: str) -> str:
    return _unique(name, set(model.layer_names()) | set(model.node_names()))


def _check_classes(num_classes) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f"transfer: num_classes must be an int >= 2; received num_classes={num_classes!r}")


def _set_classes(model: Model, num_classes: int, class_names) -> None:
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"transfer: {len(names)} class names for {num_classes} classes; give one name per class")
    model.meta["class_names"] = names
