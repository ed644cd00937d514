"""Model surgery for transfer learning: copy, cut at a named layer, new head, re-initialise.

Every function returns a new :class:`~cnnkit.model.Sequential` rebuilt from the source's
architecture data (``get_config``), so the source model is never modified. That data carries
each layer's ``trainable`` flags and batch norm's ``frozen_stats``, so copies keep what is
frozen; a new classifier is trainable, and :func:`reinitialised` starts every layer afresh.
"""

from __future__ import annotations

import copy

from ..errors import ConfigError
from ..layers import (AvgPool2d, Dense, Dropout, Flatten, GlobalAvgPool2d, GlobalMaxPool2d, Layer, MaxPool2d,
                      Softmax)
from ..model import Sequential

POOLING = (MaxPool2d, AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d)


def layer_configs(model: Sequential) -> list[dict]:
    """The ``{"class", "config"}`` entries of every layer (deep copies, safe to edit)."""
    return copy.deepcopy(model.get_config()["layers"])


def head_index(model: Sequential) -> int:
    """Position of the classifier: the last ``Dense`` layer."""
    for position in range(len(model.layers) - 1, -1, -1):
        if isinstance(model.layers[position], Dense):
            return position
    raise ConfigError(f"{model.name}: transfer needs a classifier (a Dense layer) to replace; the model has "
                      f"none; layers are {model.layer_names()}")


def cut_index(model: Sequential, layer: str | None, argument: str = "layer") -> int:
    """Position of the named cut layer; it must lie below the classifier."""
    if layer is None:
        return -1
    position = model.index(layer)
    head = head_index(model)
    if position >= head:
        raise ConfigError(f"{model.name}: {argument}={layer!r} is the classifier or above it; name a layer below "
                          f"{model.layers[head].name!r}, e.g. one of {feature_layers(model)}")
    return position


def feature_layers(model: Sequential) -> list[str]:
    """Block outputs worth reading features from, shallow to deep: every pooling layer and, for each
    hidden ``Dense`` layer, the activation after it (``relu6``/``relu7`` in VGG16, ``relu_fc1`` in
    ``vgg_small``). Nothing at or above the classifier is included."""
    head = head_index(model)
    names = []
    for position, layer in enumerate(model.layers[:head]):
        if isinstance(layer, POOLING):
            names.append(layer.name)
        elif isinstance(layer, Dense):
            following = model.layers[position + 1] if position + 1 < head else None
            activation = following is not None and not isinstance(following, (Dense, Dropout, Flatten))
            names.append(following.name if activation else layer.name)
    return names


def copy_model(model: Sequential, layers: list[dict] | None = None, seed: int | None = None,
               keep_weights: bool = True) -> Sequential:
    """A new model with ``layers`` (default: the source's), weights copied where the names match."""
    config = model.get_config()
    config = {**config, "meta": copy.deepcopy(config["meta"])}
    if layers is not None:
        config["layers"] = layers
    if seed is not None:
        config["seed"] = seed
    clone = Sequential.from_config(config)
    if keep_weights:
        target = clone.state_dict()
        clone.load_state_dict({k: v for k, v in model.state_dict().items()
                               if k in target and target[k].shape == v.shape}, strict=False)
    return clone


def truncate(model: Sequential, layer: str) -> Sequential:
    """The network up to and including ``layer``, with its weights: a fixed feature extractor."""
    stop = model.index(layer) + 1
    return copy_model(model, layer_configs(model)[:stop])


def _new_head_configs(model: Sequential, num_classes: int) -> tuple[list[dict], str]:
    configs = layer_configs(model)
    head = head_index(model)
    configs[head]["config"]["units"] = int(num_classes)
    configs[head]["config"]["trainable"] = True   # a new classifier learns, whatever the old one did
    if not isinstance(model.layers[-1], Softmax):
        configs.append({"class": "Softmax", "config": {"name": _free_name(model, "prob")}})
    return configs, model.layers[head].name


def with_new_head(model: Sequential, num_classes: int, seed: int = 0,
                  class_names: list[str] | None = None) -> Sequential:
    """The model with a freshly initialised classifier of ``num_classes`` units (same name as the old
    one) and a final softmax; every other weight is copied."""
    _check_classes(num_classes)
    configs, head = _new_head_configs(model, num_classes)
    clone = copy_model(model, configs, seed=seed, keep_weights=False)
    source = model.state_dict()
    clone.load_state_dict({k: v for k, v in source.items() if not k.startswith(head + ".")}, strict=False)
    _set_classes(clone, num_classes, class_names)
    return clone


def reinitialised(model: Sequential, num_classes: int, seed: int = 0,
                  class_names: list[str] | None = None) -> Sequential:
    """The same architecture (with a ``num_classes`` classifier), every weight drawn anew from ``seed``,
    every layer trainable and batch norm learning its statistics: a model to train from scratch."""
    _check_classes(num_classes)
    configs, _ = _new_head_configs(model, num_classes)
    for entry in configs:
        entry["config"]["trainable"] = True
        if "frozen_stats" in entry["config"]:
            entry["config"]["frozen_stats"] = False
    clone = copy_model(model, configs, seed=seed, keep_weights=False)
    _set_classes(clone, num_classes, class_names)
    return clone


def compose(extractor: Sequential, classifier: list[Layer], name: str | None = None) -> Sequential:
    """``extractor`` followed by ``classifier`` layers (built here) as one model; weights are copied.

    A volume output gets a ``Flatten`` before the classifier.
    """
    configs = layer_configs(extractor)
    taken = set(extractor.layer_names())
    extra = ([Flatten(name=_unique("features_flatten", taken))] if len(extractor.output_shape) > 1 else [])
    for layer in extra + list(classifier):
        layer.name = _unique(layer.name or type(layer).__name__.lower(), taken)
        taken.add(layer.name)
        configs.append({"class": type(layer).__name__, "config": layer.get_config()})
    model = copy_model(extractor, configs)
    if name is not None:
        model.name = name
    return model


def _unique(name: str, taken: set[str]) -> str:
    candidate, count = name, 1
    while candidate in taken:
        count += 1
        candidate = f"{name}_{count}"
    return candidate


def _free_name(model: Sequential, name: str) -> str:
    return _unique(name, set(model.layer_names()))


def _check_classes(num_classes) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f"transfer: num_classes must be an int >= 2; received num_classes={num_classes!r}")


def _set_classes(model: Sequential, num_classes: int, class_names) -> None:
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"transfer: {len(names)} class names for {num_classes} classes; give one name per class")
    model.meta["class_names"] = names
