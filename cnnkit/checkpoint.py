"""Loading a cnnkit file: the architecture checked against the tensors, then the model rebuilt.

:func:`load` (``cnnkit.load``) reads a model file or a training checkpoint (the format is in
:mod:`cnnkit.model_file`) and returns the model with its weights, ``trainable`` flags and
batch-norm state: a :class:`~cnnkit.model.Sequential` for a chain's config, a
:class:`~cnnkit.model.Model` for a graph's (``"class": "Model"``). Custom layer classes load
when registered with :func:`cnnkit.register_layer`; no code comes from the file.

A file is untrusted. Before any layer is built, its architecture is walked with shapes (the
chain's layers in order, or the graph's nodes in order) and each layer's parameter count is
compared with the numbers the file holds for it, so a file cannot make the model bigger than
its own tensors. This module sits above :mod:`cnnkit.model`; the file names it exported before
(``save_model``, the training-checkpoint functions) are re-exported from :mod:`cnnkit.model_file`.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .arithmetic import transposed_windows, window_output_size, windows_2d
from .errors import CnnkitError, WeightsError
from .graph_config import parse_graph
from .io import read_safetensors, read_safetensors_metadata  # noqa: F401 (read_safetensors_metadata: older imports)
from .io.safetensors_io import read_safetensors_shapes
from .layers import BatchNorm2d, Conv2d, Conv2dTranspose, Dense, DepthwiseConv2d, PReLU
from .model import Model, Sequential
from .model_file import (FORMAT_VERSION, MODEL_FORMAT, TRAINING_FORMAT, TrainingCheckpoint,  # noqa: F401
                         architecture, cnnkit_metadata, is_cnnkit_file, load_training_checkpoint,
                         read_callback_states, save_model, save_training_checkpoint, tensor_prefix)
from .parameter import describing_only

#: errors that a malformed architecture raises inside constructors and builds
MALFORMED = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)


def load(path) -> Model:
    """Rebuild a model saved by :meth:`Model.save` (or from a training checkpoint).

    The architecture is checked against the tensors in the file before anything is
    allocated: a file cannot make the model bigger than the weights it holds.
    """
    metadata = cnnkit_metadata(path)
    config = architecture(metadata, path)
    prefix = tensor_prefix(metadata)
    with _naming(path):
        with _malformed_as_weights_error(path):
            _check_architecture_fits(config, _layer_elements(read_safetensors_shapes(path), prefix), path)
            model = Sequential.from_config(config)   # a graph's config gives a Model
        tensors = read_safetensors(path)
        model.load_state_dict({key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)})
    return model


@contextmanager
def _naming(path):
    """Every failure inside is a CnnkitError that names the file."""
    try:
        yield
    except MemoryError:
        raise WeightsError(f"{path}: not enough memory to load this model") from None
    except CnnkitError as error:   # a layer's or the model's own words: say which file they are about
        if str(path) in str(error):
            raise
        raise WeightsError(f"{path}: {error}") from None


@contextmanager
def _malformed_as_weights_error(path):
    """Python's errors from malformed fields (a string where a number belongs) as a WeightsError."""
    try:
        yield
    except CnnkitError:
        raise
    except MALFORMED as error:
        raise WeightsError(f"{path}: the architecture in its header is malformed "
                           f"({type(error).__name__}: {error}); save the model again") from None


def _layer_elements(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, int]:
    """Numbers the file holds for each layer (``conv1.weight`` counts for ``conv1``)."""
    counts: dict[str, int] = {}
    for key, shape in shapes.items():
        if key.startswith(prefix):
            layer = key[len(prefix):].rpartition(".")[0]
            counts[layer] = counts.get(layer, 0) + int(np.prod(shape, dtype=object))
    return counts


def _check_architecture_fits(config: dict, held: dict[str, int], path) -> None:
    """Refuse an architecture whose parameters outnumber the file's tensors, before building.

    The shapes flow through the layers as a build would take them, but a layer with parameters
    is only counted (with the formulas of :mod:`cnnkit.arithmetic`), never built. Where a field
    is wrong in a way the real build reports (a hyper-parameter that is not a positive int, a
    shape a merge refuses), the walk stops and leaves the report to the build, which then fails
    at that same layer, before building anything the walk has not counted.
    """
    if config.get("class") == "Model":
        _check_graph_fits(config, held, path)
    else:
        _check_chain_fits(config, held, path)


def _check_chain_fits(config: dict, held: dict[str, int], path) -> None:
    """The check of a Sequential's config: its layers in order, from ``input_shape``."""
    input_shape = config.get("input_shape")
    if not isinstance(input_shape, list) or not all(isinstance(v, int) and v > 0 for v in input_shape):
        return  # Sequential.build refuses it with its own message
    shell = Sequential.from_config({**config, "input_shape": None})   # named layers, nothing built
    strict = bool(config.get("strict", False))
    shape = tuple(input_shape)
    for layer in shell.layers:
        planned = _planned_layer(layer, shape, strict)
        if planned is None:
            return  # a bad hyper-parameter: the real build names it
        count, shape = planned
        _refuse_bigger(layer, count, held, path)


def _check_graph_fits(config: dict, held: dict[str, int], path) -> None:
    """The check of a graph's config: its nodes in order, each reading the shapes of the tensors
    it names; a layer used at several nodes is counted once (its weights are shared)."""
    spec = parse_graph(config)   # structure and layer arguments checked; nothing built
    strict = bool(config.get("strict", False))
    shapes = {tensor.name: tensor.shape for tensor in spec.inputs}
    planned: dict[str, tuple] = {}   # layer name -> (input shape, output shape) at its first node
    for node in spec.nodes:
        layer = spec.layers[node.layer]
        shape = [shapes[name] for name in node.inputs] if layer.arity is None else shapes[node.inputs[0]]
        if node.layer in planned:
            first_shape, output = planned[node.layer]
            if shape != first_shape:
                return  # a shared layer given another shape: connecting the graph refuses it
            shapes[node.name] = output
            continue
        counted = _planned_layer(layer, shape, strict)
        if counted is None:
            return
        count, output = counted
        _refuse_bigger(layer, count, held, path)
        planned[node.layer] = (shape, output)
        shapes[node.name] = output


def _refuse_bigger(layer, count: int, held: dict[str, int], path) -> None:
    if count > held.get(layer.name, 0):
        raise WeightsError(
            f"{path}: its architecture gives layer {layer.name} ({type(layer).__name__}) "
            f"{count:,} parameters, but the file holds {held.get(layer.name, 0):,} numbers for it; "
            "the header does not match the weights (corrupted or crafted), so nothing was built"
        )


def _planned_layer(layer, shape, strict: bool) -> tuple[int, tuple[int, ...]] | None:
    """(parameter count, output shape) of ``layer`` on ``shape`` (a list of shapes for a merge),
    allocating nothing.

    cnnkit's layers with parameters are counted with the arithmetic formulas; every other layer
    (no parameters, a merge, a registered custom layer, one with buffers only as
    :class:`~cnnkit.layers.Rescaling`) is built as a description, whose parameters and buffers
    are placeholders that hold no numbers, and counted as its parameters plus its buffers (whose
    shapes may come from the config). None means a hyper-parameter is not a positive int, which
    the real build reports.
    """
    if not isinstance(layer, (Conv2d, DepthwiseConv2d, Conv2dTranspose, Dense, BatchNorm2d, PReLU)):
        with describing_only():
            output = layer.build(shape, None, strict=strict)
        return layer.param_count() + sum(buffer.size for buffer in layer.buffers().values()), tuple(output)
    size = getattr(layer, "filters", getattr(layer, "units", getattr(layer, "depth_multiplier", 1)))
    if not _is_positive_int(size):
        return None
    if isinstance(layer, Dense):
        if len(shape) != 1:
            return None
        out = (size,)
    elif isinstance(layer, Conv2dTranspose):
        if len(shape) != 3 or layer.groups != 1:
            return None
        _, out_hw = transposed_windows(shape[:2], layer.kernel_size, layer.stride, layer.padding,
                                       layer.output_padding, layer.dilation, layer.label)
        out = (*out_hw, size)
    elif isinstance(layer, (Conv2d, DepthwiseConv2d)):
        groups = getattr(layer, "groups", 1)   # a depthwise layer's weight is per channel: nothing to divide
        if len(shape) != 3 or not _is_positive_int(groups) or shape[2] % groups or size % groups:
            return None
        windows = windows_2d(shape[:2], layer.kernel_size, layer.stride, layer.padding,
                             layer.dilation, layer.label)
        channels = size if isinstance(layer, Conv2d) else shape[2] * size
        out = (*(window_output_size(n, win, layer.label, axis, strict)
                 for n, win, axis in zip(shape[:2], windows, "HW")), channels)
    else:
        out = shape
    layer.input_shape = shape  # what param_count reads; the layer is a throwaway copy
    return layer.param_count(), out


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
