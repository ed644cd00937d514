"""Rebuilding a graph from its saved architecture (``Model.get_config``), checked field by field.

A model file is an attack surface: its architecture is read as plain data, every field is
checked before use, layer classes come from the registered table only (no code runs), and a
node may only read tensors defined before it (so a file cannot make a cycle).

Reading happens in two steps: :func:`parse_graph` checks the structure and makes the layer
objects (constructor arguments only: nothing is built or allocated), and :func:`graph_from_config`
connects them. Between the two, a file reader can walk the nodes with their shapes and count
what each layer would allocate against what the file holds (:mod:`cnnkit.checkpoint`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import CnnkitError, ConfigError
from .graph import Input, SymbolicTensor
from .layers import LAYER_CLASSES, Layer

#: version of the graph architecture format (``"format"`` in ``Model.get_config``)
GRAPH_FORMAT = 1
#: the largest graph a file may describe (ResNet-152 has about 500 nodes)
MAX_NODES = 100_000
#: the most numbers one sample's tensor may hold (224x224x3 is 150,528; 2**31 is 8 GiB of float32)
MAX_VOLUME = 1 << 31
#: the most parameters a graph may have (VGG16 has 138 million; 2**31 is 8 GiB of float32)
MAX_PARAMETERS = 1 << 31


@dataclass
class GraphNode:
    """One node of a parsed graph: ``layer`` applied to the tensors named ``inputs``; its output is
    the tensor ``name`` (the layer's name, ``name:1`` for its second use)."""

    name: str
    layer: str
    inputs: list[str]


@dataclass
class GraphSpec:
    """A graph architecture, checked and not yet built: its layers (unbuilt), inputs, nodes in order,
    outputs and the ``Model`` options."""

    layers: dict[str, Layer]
    inputs: list[SymbolicTensor]
    nodes: list[GraphNode]
    outputs: list[str]
    options: dict
    several_inputs: bool
    several_outputs: bool


def parse_graph(config: Mapping) -> GraphSpec:
    """Check the structure of a graph config and make its layer objects (not built)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"architecture: must be a mapping (a JSON object); received {type(config).__name__}")
    version = config.get("format")
    if version != GRAPH_FORMAT or isinstance(version, bool):
        raise ConfigError(f"architecture: graph format {version!r} is not one this cnnkit reads ({GRAPH_FORMAT}); "
                          f"upgrade cnnkit to read it")
    layers = _layers(_list(config, "layers"), LAYER_CLASSES)
    inputs, defined = [], set()
    for index, entry in enumerate(_list(config, "inputs")):
        name = _string(_field(entry, "name", f"input {index}"), f"input {index} name")
        if name in defined:
            raise ConfigError(f"architecture: input name {name!r} appears twice")
        inputs.append(Input(_shape(_field(entry, "shape", f"input {name}"), f"input {name!r}"), name=name))
        defined.add(name)
    nodes = _list(config, "nodes")
    if len(nodes) > MAX_NODES:
        raise ConfigError(f"architecture: {len(nodes)} nodes is more than the {MAX_NODES} cnnkit reads")
    parsed, uses = [], {}
    for index, entry in enumerate(nodes):
        node = _node(entry, index, layers, defined, uses)
        parsed.append(node)
        defined.add(node.name)
    outputs = _list(config, "outputs")
    for name in outputs:
        if not isinstance(name, str) or name not in defined:
            raise ConfigError(f"architecture: output {name!r} is not an input or a node")
    if not inputs or not outputs:
        raise ConfigError("architecture: a graph needs at least one input and one output")
    if not isinstance(config.get("meta", {}), Mapping):
        raise ConfigError(f"architecture: meta must be a mapping; received {type(config['meta']).__name__}")
    unused = [name for name in layers if name not in uses]
    if unused:
        raise ConfigError(f"architecture: layers {unused} are applied by no node; remove them or add their nodes")
    options = {"name": _string(config.get("name", "model"), "name"), "seed": _seed(config.get("seed", 0)),
               "strict": _flag(config, "strict", False)}
    return GraphSpec(layers, inputs, parsed, list(outputs), options,
                     _flag(config, "several_inputs", True), _flag(config, "several_outputs", True))


def _node(entry, index: int, layers: dict[str, Layer], defined: set[str], uses: dict[str, int]) -> GraphNode:
    """Node ``index`` of a config, checked: a known layer reading tensors defined before it."""
    layer_name = _string(_field(entry, "layer", f"node {index}"), f"node {index} layer")
    if layer_name not in layers:
        raise ConfigError(f"architecture: node {index} applies layer {layer_name!r}, which is not among the "
                          f"layers {sorted(layers)}")
    sources = _field(entry, "inputs", f"node {index}")
    if not isinstance(sources, list):
        raise ConfigError(f"architecture: node {index} ({layer_name}) inputs must be a non-empty list of tensor "
                          f"names; received {sources!r}")
    for source in sources:
        if not isinstance(source, str) or source not in defined:
            raise ConfigError(f"architecture: node {index} ({layer_name}) reads {source!r}, which is not an "
                              f"input or an earlier node")
    if not sources:
        raise ConfigError(f"architecture: node {index} ({layer_name}) reads no tensor")
    if layers[layer_name].arity is not None and len(sources) != 1:
        raise ConfigError(f"architecture: node {index} ({layer_name}) reads {len(sources)} tensors; "
                          f"the layer takes {layers[layer_name].arity}")
    count = uses.get(layer_name, 0)
    uses[layer_name] = count + 1
    return GraphNode(layer_name if count == 0 else f"{layer_name}:{count}", layer_name, list(sources))


def graph_from_config(config: Mapping) -> tuple[list[SymbolicTensor] | SymbolicTensor,
                                                list[SymbolicTensor] | SymbolicTensor, dict]:
    """The inputs, outputs and ``Model`` options that ``config`` describes; its layers built
    as descriptions (the model draws or loads their weights)."""
    return build_graph(parse_graph(config))


def build_graph(spec: GraphSpec) -> tuple[list[SymbolicTensor] | SymbolicTensor,
                                          list[SymbolicTensor] | SymbolicTensor, dict]:
    """Connect the layers of a parsed graph (building each as a description, no weights)."""
    tensors: dict[str, SymbolicTensor] = {tensor.name: tensor for tensor in spec.inputs}
    for index, node in enumerate(spec.nodes):
        sources = [tensors[name] for name in node.inputs]
        tensors[node.name] = _apply(spec.layers[node.layer], sources, f"node {index} ({node.layer})")
    _check_parameters(spec.layers.values())
    inputs, outputs = spec.inputs, [tensors[name] for name in spec.outputs]
    return (inputs if spec.several_inputs or len(inputs) > 1 else inputs[0],
            outputs if spec.several_outputs or len(outputs) > 1 else outputs[0], dict(spec.options))


def _layers(entries: list, classes: Mapping) -> dict[str, Layer]:
    layers = {}
    for index, entry in enumerate(entries):
        kind = entry.get("class") if isinstance(entry, Mapping) else None
        if not isinstance(kind, str) or kind not in classes:
            raise ConfigError(f"architecture: layer {index} has unknown class {kind!r}; known classes are "
                              f"{sorted(classes)} (custom layers: decorate the class with cnnkit.register_layer)")
        arguments = entry.get("config", {})
        if not isinstance(arguments, Mapping) or not all(isinstance(key, str) for key in arguments):
            raise ConfigError(f"architecture: layer {index} ({kind}) config must be a mapping of argument names")
        try:
            layer = classes[kind].from_config(arguments)
        except CnnkitError:
            raise
        except (TypeError, ValueError, OverflowError) as error:
            raise ConfigError(f"architecture: layer {index} ({kind}) has bad arguments: {error}") from None
        if not isinstance(layer.name, str) or not layer.name or layer.name in layers:
            raise ConfigError(f"architecture: layer {index} ({kind}) needs a unique name; received {layer.name!r}")
        layers[layer.name] = layer
    return layers


def _apply(layer, sources: list[SymbolicTensor], where: str) -> SymbolicTensor:
    """The layer called on ``sources`` (built as a description); every failure a ConfigError
    naming the node, and an output too large to compute refused."""
    if layer.arity is not None and len(sources) != layer.arity:
        raise ConfigError(f"architecture: {where} reads {len(sources)} tensors; the layer takes {layer.arity}")
    try:
        output = layer(sources if layer.arity is None else sources[0])
    except CnnkitError as error:
        raise ConfigError(f"architecture: {where}: {error}") from None
    except (TypeError, ValueError, OverflowError, MemoryError) as error:   # a size no array can have
        raise ConfigError(f"architecture: {where} cannot be built: {type(error).__name__}: {error}") from None
    _check_volume(output.shape, where)
    return output


def _shape(value, where: str) -> tuple[int, ...]:
    """A per-sample shape: a non-empty list of positive ints, of a size cnnkit can compute on."""
    if not isinstance(value, list) or not value \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(f"architecture: {where} shape must be a list of positive ints such as [224, 224, 3]; "
                          f"received {value!r}")
    _check_volume(value, where)
    return tuple(value)


def _check_volume(shape, where: str) -> None:
    volume = math.prod(shape)
    if volume > MAX_VOLUME:
        raise ConfigError(f"architecture: {where} has shape {tuple(shape)}, {volume:,} numbers per sample, more "
                          f"than the {MAX_VOLUME:,} cnnkit computes on")


def _check_parameters(layers) -> None:
    total = sum(layer.param_count() for layer in layers if layer.built)
    if total > MAX_PARAMETERS:
        raise ConfigError(f"architecture: the layers have {total:,} parameters, more than the {MAX_PARAMETERS:,} "
                          f"cnnkit builds")


def _seed(value) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ConfigError(f"architecture: seed must be a non-negative int or null; received {value!r}")
    return value


def _flag(config: Mapping, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"architecture: {key} must be true or false; received {value!r}")
    return value


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
