"""Keras 3 weights under Keras's own names: ``conv2d_3/0`` becomes ``block2_conv2/kernel``.

Keras 3 stores a layer's variables under a path made from its class, not its name: the class
name snake-cased (``Conv2D`` -> ``conv2d``) and made unique in the order of ``model.layers``
(``conv2d``, ``conv2d_1``, ... ``conv2d_10``), and each variable by its position in creation
order (``0`` the kernel, ``1`` the bias). Three facts tell which layer a path is, best first:

1. the ``name`` attribute that recent Keras 3 releases write on each ``vars`` group
   (:func:`cnnkit.io.keras_h5.read_keras_h5_with_names`);
2. the ``config.json`` of a ``.keras`` archive (:func:`paths_from_config`): its layer list is
   ``model.layers`` in order, so the n-th ``Conv2D`` of the list is path ``conv2d_<n>``;
3. the architecture being loaded (:func:`name_by_structure`): the n-th ``conv2d`` of the file is
   the n-th convolution of the model in Keras's order, given as Keras layer names per kind.

Variables are named by the kind's creation order (``VARIABLES``), so the result has the keys of
a legacy Keras ``.h5`` (``block1_conv1/kernel``) and maps onto cnnkit models as those do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnnkit.errors import WeightsError

__all__ = ["NORM_VARIABLES", "VARIABLES", "is_storage_layout", "layer_kind", "name_by_structure", "name_layers",
           "paths_from_config", "snake_case"]

#: A layer kind's variables in the order Keras creates (and stores) them.
VARIABLES = {
    "conv2d": ("kernel", "bias"),
    "conv2d_transpose": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "depthwise_conv2d": ("depthwise_kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}
#: Keras's name of each array of cnnkit's batch norm (a convolution's and a dense layer's ``weight`` is
#: Keras's ``kernel``; ``bias`` is ``bias``).
NORM_VARIABLES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                  "running_var": "moving_variance"}
#: The configuration switch without which a variable is not created.
SWITCHES = {"bias": "use_bias", "gamma": "scale", "beta": "center"}
MAX_CONFIG_DEPTH = 32  # models nested in models, in config.json
_STORAGE_KEY = re.compile(r"(?:[a-z0-9_]+/)*[a-z0-9_]+/\d+")


def snake_case(class_name: str) -> str:
    """Keras's path name for a class: ``Conv2D`` -> ``conv2d``, ``MaxPooling2D`` -> ``max_pooling2d``,
    ``BatchNormalization`` -> ``batch_normalization``, ``ReLU`` -> ``re_lu``.

    Non-word characters are dropped; an underscore goes before a capital that starts a
    lower-case word (unless it begins the name) and between a lower-case letter and a capital.
    """
    name = re.sub(r"\W+", "", class_name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def layer_kind(path: str) -> tuple[str, int]:
    """``conv2d_10`` -> ``("conv2d", 10)``; ``conv2d`` -> ``("conv2d", 0)``: a path's kind and number."""
    match = re.fullmatch(r"(.+?)(?:_(\d+))?", path.rpartition("/")[2])
    return match.group(1), int(match.group(2) or 0)


def is_storage_layout(state: Mapping[str, Any]) -> bool:
    """Whether every key is a Keras 3 storage path (``conv2d_3/0``), i.e. the file named no layer."""
    return bool(state) and all(_STORAGE_KEY.fullmatch(key) for key in state)


def name_layers(state: dict[str, np.ndarray], names: Mapping[str, str], where: str,
                options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """``state`` with each named layer path's variables renamed ``<layer name>/<variable>``.

    ``names`` maps a layer path (``conv2d_3``) to the layer's name (``block2_conv2``); ``options``
    maps it to the layer's configuration where known (``use_bias``, ``center``, ``scale`` decide
    which variables exist). Paths without a name keep their keys. ``where`` names the file.

    Raises:
        WeightsError: two paths have the same name, or a layer's variables are not those of its kind.
    """
    layers = _by_layer(state)
    out = {key: array for key, array in state.items()
           if not (key.rpartition("/")[0] in names and key.rpartition("/")[2].isdigit())}
    owner: dict[str, str] = {}
    for path, indexed in layers.items():
        name = names.get(path)
        if name is None:
            continue
        if name in owner:
            raise WeightsError(f"{where}: layers {owner[name]} and {path} are both named {name!r}; "
                               "a Keras model's layer names are unique: the file is corrupted")
        owner[name] = path
        variables = _variable_names(path, [index for index, _ in indexed], (options or {}).get(path), where)
        for variable, (_, array) in zip(variables, indexed):
            key = f"{name}/{variable}"
            if key in out:
                raise WeightsError(f"{where}: weight {key!r} is named twice, by layer {path} and by the file's "
                                   "other keys; the file is corrupted")
            out[key] = array
    return out


def name_by_structure(state: dict[str, np.ndarray], order: Mapping[str, list[str]], where: str,
                      model_name: str) -> dict[str, np.ndarray]:
    """Name a file's layer paths after the model's structure: path ``<kind>_<n>`` is ``order[kind][n]``.

    ``order`` lists, for each Keras kind, the Keras names of the model's layers of that kind in
    the order Keras creates them (``{"conv2d": ["block1_conv1", ...], "dense": ["fc1", ...]}``).
    The file may hold fewer layers of a kind than the model (a file without the classifier);
    shapes are checked when the named weights are mapped onto the model.

    Raises:
        WeightsError: the file holds a kind the model lacks, more layers of a kind than the
            model has, or numbers with a gap (all listed at once).
    """
    counts: dict[str, list[int]] = {}
    for path in _by_layer(state):
        if "/" in path:
            raise WeightsError(f"{where}: layer {path} is inside a nested model; cnnkit maps the layers of "
                               f"one Keras model onto {model_name}: save the inner model's weights on their own")
        kind, number = layer_kind(path)
        counts.setdefault(kind, []).append(number)
    problems = []
    for kind, numbers in sorted(counts.items()):
        known = len(order.get(kind, ()))
        if sorted(numbers) != list(range(len(numbers))):
            problems.append(f"its {kind} layers are numbered {sorted(numbers)[:12]}, with gaps")
        elif len(numbers) > known:
            problems.append(f"it holds {len(numbers)} {kind} layers, {model_name} has {known}")
    if problems:
        raise WeightsError(f"{where} does not have the layers of {model_name}: " + "; ".join(problems))
    names = {}
    for path in _by_layer(state):
        kind, number = layer_kind(path)
        names[path] = order[kind][number]
    return name_layers(state, names, where)


def paths_from_config(config: Any, where: str) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Each layer path's name and configuration, from a ``.keras`` archive's ``config.json``.

    ``config`` is the parsed JSON, read as data only: the model's layer list (a ``Functional``'s
    or a ``Sequential``'s ``config.layers``) is ``model.layers`` in order, and each entry's
    ``class_name`` gives its kind. A model nested as a layer is followed into its own layers.
    A configuration without a layer list (a subclassed model's) names nothing: ``({}, {})``.

    Raises:
        WeightsError: the configuration is not a JSON object, or its layer list has not the
            shape Keras writes.
    """
    if not isinstance(config, dict):
        raise WeightsError(f"{where} is not a JSON object, as Keras writes a model's configuration "
                           f"(found {type(config).__name__}); save the model again with Keras")
    names: dict[str, str] = {}
    options: dict[str, dict[str, Any]] = {}
    inner = config.get("config")
    if isinstance(inner, dict) and "layers" in inner:
        _walk_config(config, "", names, options, where, 0)
    return names, options


def _walk_config(model: Any, prefix: str, names: dict, options: dict, where: str, depth: int) -> None:
    # paths_from_config and _entry have checked that model and model["config"] are objects
    layers = model["config"].get("layers")
    if depth > MAX_CONFIG_DEPTH:
        raise WeightsError(f"{where}: models nest deeper than {MAX_CONFIG_DEPTH} levels in config.json; "
                           "Keras applications nest none: save the model again with Keras")
    if not isinstance(layers, list):
        raise WeightsError(f"{where}: config.json's layers at depth {depth} are not a list; it is not a "
                           "Keras 3 model configuration: save the model again with Keras")
    used: dict[str, int] = {}
    for position, layer in enumerate(layers):
        class_name, config = _entry(layer, position, where)
        if class_name == "InputLayer":
            continue  # no weights; a Sequential's model.layers does not even list it
        kind = snake_case(class_name)
        number = used[kind] = used.get(kind, -1) + 1
        path = prefix + (kind if number == 0 else f"{kind}_{number}")
        names[path], options[path] = config["name"], config
        if isinstance(config.get("layers"), list):
            _walk_config(layer, path + "/", names, options, where, depth + 1)


def _entry(layer: Any, position: int, where: str) -> tuple[str, dict[str, Any]]:
    config = layer.get("config") if isinstance(layer, dict) else None
    class_name = layer.get("class_name") if isinstance(layer, dict) else None
    if not (isinstance(class_name, str) and isinstance(config, dict) and isinstance(config.get("name"), str)
            and class_name and config["name"] and "/" not in config["name"]):
        raise WeightsError(f"{where}: config.json's layer {position} is not a Keras layer entry "
                           "(a class_name and a config with a name without '/'); save the model again with Keras")
    return class_name, config


def _by_layer(state: Mapping[str, np.ndarray]) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``{"conv2d_3": [(0, kernel), (1, bias)]}``: each layer path's variables by position.
    A key whose last part is not a position (not a Keras 3 variable) belongs to no layer."""
    layers: dict[str, list[tuple[int, np.ndarray]]] = {}
    for key, array in state.items():
        path, _, index = key.rpartition("/")
        if path and index.isdigit():
            layers.setdefault(path, []).append((int(index), array))
    for indexed in layers.values():
        indexed.sort(key=lambda item: item[0])
    return layers


def _variable_names(path: str, positions: list[int], config: Mapping[str, Any] | None,
                    where: str) -> tuple[str, ...]:
    """The names of a layer's variables, by its kind and, where known, its configuration."""
    kind, _ = layer_kind(path)
    count = len(positions)
    if positions != list(range(count)):
        raise WeightsError(f"{where}: layer {path} holds variables {positions[:8]}, not 0 to {count - 1} as "
                           "Keras numbers them; the file is corrupted")
    full = VARIABLES.get(kind)
    if full is None:
        return tuple(str(index) for index in range(count))  # a kind cnnkit does not map: keep positions
    if config is not None:
        names = tuple(v for v in full if config.get(SWITCHES.get(v, ""), True) is not False)
    else:  # without the configuration, only all switches on or all off can be told apart
        always = tuple(v for v in full if v not in SWITCHES)
        names = full if count == len(full) else always if count == len(always) else ()
        if not names:
            raise WeightsError(f"{where}: layer {path} holds {count} variables; a {kind} has {len(full)} "
                               f"({', '.join(full)}), or fewer in ways the count does not tell: load the "
                               ".keras file, whose config.json says which")
    if len(names) != count:
        raise WeightsError(f"{where}: layer {path} holds {count} variables, a {kind} so configured has "
                           f"{len(names)} ({', '.join(names)}); the file is corrupted")
    return names
