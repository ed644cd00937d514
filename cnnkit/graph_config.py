"""Rebuilding a graph from its saved architecture (``Model.get_config``), checked field by field.

A model file is an attack surface: its architecture is read as plain data, every field is
checked before use, layer classes come from the registered table only (no code runs), and a
node may only read tensors defined before it (so a file cannot make a cycle).
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ConfigError
from .graph import Input, SymbolicTensor

#: the largest graph a file may describe (ResNet-152 has about 500 nodes)
MAX_NODES = 100_000


def graph_from_config(config: Mapping) -> tuple[list[SymbolicTensor] | SymbolicTensor,
                                                list[SymbolicTensor] | SymbolicTensor, dict]:
    """The inputs, outputs and ``Model`` options that ``config`` describes; its layers built
    as descriptions (the model draws or loads their weights)."""
    from .layers import LAYER_CLASSES
    version = config.get("format")
    if version != 1:
        raise ConfigError(f"architecture: graph format {version!r} is not one this cnnkit reads (1); "
                          f"upgrade cnnkit to read it")
    layers = _layers(_list(config, "layers"), LAYER_CLASSES)
    tensors: dict[str, SymbolicTensor] = {}
    inputs = []
    for index, entry in enumerate(_list(config, "inputs")):
        name = _string(_field(entry, "name", f"input {index}"), f"input {index} name")
        if name in tensors:
            raise ConfigError(f"architecture: input name {name!r} appears twice")
        tensors[name] = Input(_field(entry, "shape", f"input {name}"), name=name)
        inputs.append(tensors[name])
    uses: dict[str, int] = {}
    nodes = _list(config, "nodes")
    if len(nodes) > MAX_NODES:
        raise ConfigError(f"architecture: {len(nodes)} nodes is more than the {MAX_NODES} cnnkit reads")
    for index, entry in enumerate(nodes):
        layer_name = _string(_field(entry, "layer", f"node {index}"), f"node {index} layer")
        if layer_name not in layers:
            raise ConfigError(f"architecture: node {index} applies layer {layer_name!r}, which is not among the "
                              f"layers {sorted(layers)}")
        sources = []
        for source in _field(entry, "inputs", f"node {index}") or []:
            if not isinstance(source, str) or source not in tensors:
                raise ConfigError(f"architecture: node {index} ({layer_name}) reads {source!r}, which is not an "
                                  f"input or an earlier node")
            sources.append(tensors[source])
        if not sources:
            raise ConfigError(f"architecture: node {index} ({layer_name}) reads no tensor")
        layer = layers[layer_name]
        count = uses.get(layer_name, 0)
        uses[layer_name] = count + 1
        node_name = layer_name if count == 0 else f"{layer_name}:{count}"
        tensors[node_name] = layer(sources if layer.arity is None else sources[0]) \
            if layer.arity is None or len(sources) == 1 else _arity_error(layer_name, index, len(sources))
    outputs = []
    for name in _list(config, "outputs"):
        if not isinstance(name, str) or name not in tensors:
            raise ConfigError(f"architecture: output {name!r} is not an input or a node")
        outputs.append(tensors[name])
    if not inputs or not outputs:
        raise ConfigError("architecture: a graph needs at least one input and one output")
    options = {"name": _string(config.get("name", "model"), "name"), "seed": config.get("seed", 0),
               "strict": bool(config.get("strict", False))}
    several_in, several_out = bool(config.get("several_inputs", True)), bool(config.get("several_outputs", True))
    return (inputs if several_in or len(inputs) > 1 else inputs[0],
            outputs if several_out or len(outputs) > 1 else outputs[0], options)


def _layers(entries: list, classes: Mapping) -> dict:
    layers = {}
    for index, entry in enumerate(entries):
        kind = entry.get("class") if isinstance(entry, Mapping) else None
        if kind not in classes:
            raise ConfigError(f"architecture: layer {index} has unknown class {kind!r}; known classes are "
                              f"{sorted(classes)} (custom layers: decorate the class with cnnkit.register_layer)")
        arguments = entry.get("config", {})
        if not isinstance(arguments, Mapping):
            raise ConfigError(f"architecture: layer {index} ({kind}) config must be a mapping")
        try:
            layer = classes[kind].from_config(arguments)
        except TypeError as error:
            raise ConfigError(f"architecture: layer {index} ({kind}) has bad arguments: {error}") from None
        if not isinstance(layer.name, str) or layer.name in layers:
            raise ConfigError(f"architecture: layer {index} ({kind}) needs a unique name; received {layer.name!r}")
        layers[layer.name] = layer
    return layers


def _arity_error(layer: str, index: int, count: int):
    raise ConfigError(f"architecture: node {index} ({layer}) reads {count} tensors; the layer takes one")


def _list(config: Mapping, key: str) -> list:
    value = config.get(key)
    if not isinstance(value, list):
        raise ConfigError(f"architecture: {key} must be a list; received {type(value).__name__}")
    return value


def _field(entry, key: str, where: str):
    if not isinstance(entry, Mapping) or key not in entry:
        raise ConfigError(f"architecture: {where} needs a {key!r} field")
    return entry[key]


def _string(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"architecture: {where} must be a non-empty string; received {value!r}")
    return value
