"""Model files and training checkpoints: architecture as JSON, weights as safetensors, one file.

A model file holds the model's state dict as tensors and its architecture (``Sequential.get_config``)
in the safetensors header, so :func:`load` rebuilds it with no code. A training checkpoint adds the
optimizer's and schedule's state, the epoch and the history, so ``fit(..., resume=path)``
continues where a run stopped. Every write goes to a temporary file renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .arithmetic import window_output_size, windows_2d
from .errors import CnnkitError, WeightsError
from .io import read_safetensors, read_safetensors_metadata, write_safetensors
from .io.safetensors_io import read_safetensors_shapes

MODEL_FORMAT = "cnnkit-model"
TRAINING_FORMAT = "cnnkit-training"
FORMAT_VERSION = "1"


def save_model(model, path) -> None:
    """Write ``model`` (architecture and every parameter and buffer) to ``path``."""
    metadata = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "architecture": json.dumps(model.get_config())}
    write_safetensors(_with_folder(path), dict(model.state_dict()), metadata)


def load(path):
    """Rebuild a model saved by :meth:`Sequential.save` (or from a training checkpoint).

    The architecture is checked against the tensors in the file before anything is
    allocated: a file cannot make the model bigger than the weights it holds.
    """
    metadata = _metadata(path)
    config = architecture(metadata, path)
    prefix = "model/" if metadata["format"] == TRAINING_FORMAT else ""
    try:
        _check_architecture_fits(config, _layer_elements(read_safetensors_shapes(path), prefix), path)
        model = _from_config(config, path)
        tensors = read_safetensors(path)
        tensors = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        model.load_state_dict(tensors)
    except MemoryError:
        raise WeightsError(f"{path}: not enough memory to load this model") from None
    except CnnkitError as error:   # a layer's or the model's own words: say which file they are about
        if str(path) in str(error):
            raise
        raise WeightsError(f"{path}: {error}") from None
    return model


def architecture(metadata: dict[str, str], path) -> dict:
    """The architecture object in a cnnkit file's header; a WeightsError when it is not a JSON object."""
    try:
        config = json.loads(metadata["architecture"])
    except (ValueError, RecursionError) as error:  # RecursionError: JSON nested thousands deep
        raise WeightsError(f"{path}: the 'architecture' in the header is not JSON ({error}); the file is "
                           f"damaged, save the model again with model.save") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: the 'architecture' in the header is a JSON {type(config).__name__}, "
                           f"not an object; the file is damaged, save the model again with model.save")
    return config


def _from_config(config: dict, path):
    """``Sequential.from_config``; malformed fields become a WeightsError naming the file."""
    from .model import Sequential
    try:
        return Sequential.from_config(config)
    except CnnkitError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as error:
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

    The shapes flow through the layers as in ``Sequential.build``, but a layer with
    parameters is only counted (with the formulas of :mod:`cnnkit.arithmetic`), never built.
    """
    input_shape = config.get("input_shape")
    if not isinstance(input_shape, list) or not all(isinstance(v, int) and v > 0 for v in input_shape):
        return  # Sequential.build refuses it with its own message
    shell = _from_config({**config, "input_shape": None}, path)
    shape = tuple(input_shape)
    for layer in shell.layers:
        planned = _planned_layer(layer, shape, bool(config.get("strict", False)))
        if planned is None:
            return  # a bad hyper-parameter: the real build names it
        count, shape = planned
        if count > held.get(layer.name, 0):
            raise WeightsError(
                f"{path}: its architecture gives layer {layer.name} ({type(layer).__name__}) "
                f"{count:,} parameters, but the file holds {held.get(layer.name, 0):,} numbers for it; "
                "the header does not match the weights (corrupted or crafted), so nothing was built"
            )


def _planned_layer(layer, shape: tuple[int, ...], strict: bool) -> tuple[int, tuple[int, ...]] | None:
    """(parameter count, output shape) of ``layer`` on ``shape``, allocating nothing.

    Layers without parameters are built (that allocates nothing); None means a
    hyper-parameter is not a positive int, which the real build reports.
    """
    from .layers import BatchNorm2d, Conv2d, Dense, PReLU
    kinds = (Conv2d, Dense, BatchNorm2d, PReLU)
    if not isinstance(layer, kinds):
        return 0, tuple(layer.build(shape, None, strict=strict))
    size = getattr(layer, "filters", getattr(layer, "units", 1))
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        return None
    if isinstance(layer, Dense):
        if len(shape) != 1:
            return None
        out = (size,)
    elif isinstance(layer, Conv2d):
        if len(shape) != 3:
            return None
        windows = windows_2d(shape[:2], layer.kernel_size, layer.stride, layer.padding,
                             layer.dilation, layer.label)
        out = (*(window_output_size(n, win, layer.label, axis, strict)
                 for n, win, axis in zip(shape[:2], windows, "HW")), size)
    else:
        out = shape
    layer.input_shape = shape  # what param_count reads; the layer is a throwaway copy
    return layer.param_count(), out


def _metadata(path) -> dict[str, str]:
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") not in (MODEL_FORMAT, TRAINING_FORMAT) or "architecture" not in metadata:
        raise WeightsError(f"{path}: not a cnnkit model file (no cnnkit architecture in its header); "
                           f"load plain weights with cnnkit.io.read_safetensors and model.load_state_dict")
    return metadata


def save_training_checkpoint(path, model, optimizer, schedule, epoch: int, history,
                             callbacks: dict[str, dict] | None = None) -> None:
    """Write weights, optimizer and schedule state, the finished epoch count, the history and the
    callbacks' states (``CallbackList.state_dict()``: best values, patience counters)."""
    tensors = {f"model/{key}": value for key, value in model.state_dict().items()}
    callback_scalars = {}
    for owner, state in (callbacks or {}).items():
        callback_scalars[owner] = {}
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                tensors[f"callbacks/{owner}/{key}"] = value
            else:
                callback_scalars[owner][key] = _plain(value)
    scalars = {}
    for key, value in optimizer.state_dict().items():
        if isinstance(value, np.ndarray):
            tensors[f"optimizer/{key}"] = value
        else:
            scalars[key] = _plain(value)
    metadata = {"format": TRAINING_FORMAT, "version": FORMAT_VERSION,
                "architecture": json.dumps(model.get_config()), "epoch": str(epoch),
                "optimizer_class": type(optimizer).__name__, "optimizer_scalars": json.dumps(scalars),
                "schedule": json.dumps(schedule.state_dict() if schedule is not None else None,
                                       default=_plain),
                "history": json.dumps(history.to_dict()), "callbacks": json.dumps(callback_scalars)}
    write_safetensors(_with_folder(path), tensors, metadata)


def _with_folder(path) -> Path:
    """``path``, after creating its folder when missing (``fit(checkpoint="run/ckpt.safetensors")``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def load_training_checkpoint(path, model, optimizer, schedule):
    """Restore a training checkpoint into ``model``, ``optimizer`` and ``schedule``; return (epoch, history)."""
    from .train import History
    metadata = _metadata(path)
    if metadata["format"] != TRAINING_FORMAT:
        raise WeightsError(f"{path}: a model file, not a training checkpoint; resume needs the file that "
                           f"fit(checkpoint=...) writes")
    if metadata["optimizer_class"] != type(optimizer).__name__:
        raise WeightsError(f"{path}: saved with {metadata['optimizer_class']}, but fit was given "
                           f"{type(optimizer).__name__}; resume with the same optimizer")
    tensors = read_safetensors(path)
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    state = _json_field(metadata, "optimizer_scalars", path, dict)
    state.update({k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")})
    optimizer.load_state_dict(state)
    saved_schedule = _json_field(metadata, "schedule", path, (dict, type(None)))
    if schedule is not None and saved_schedule is not None:
        schedule.load_state_dict(saved_schedule)
    epoch = _json_field(metadata, "epoch", path, int)
    return epoch, History.from_dict(_json_field(metadata, "history", path, dict))


def _json_field(metadata: dict[str, str], key: str, path, kind):
    """The JSON value of header field ``key``, of type ``kind``; a damaged header is a WeightsError."""
    try:
        value = json.loads(metadata[key])
    except (KeyError, TypeError, json.JSONDecodeError):
        value = _MISSING
    if value is _MISSING or not isinstance(value, kind) or isinstance(value, bool):
        raise WeightsError(f"{path}: the training checkpoint's {key!r} header field is missing or damaged; "
                           f"resume from another checkpoint or start the run afresh")
    return value


_MISSING = object()


def read_callback_states(path) -> dict[str, dict]:
    """The callbacks' states saved in a training checkpoint (empty for checkpoints written before
    callbacks had state), ready for ``CallbackList.load_state_dict``."""
    metadata = read_safetensors_metadata(path)
    try:
        states = json.loads(metadata.get("callbacks", "{}"))
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path}: the callbacks' state in the header is not JSON ({error}); "
                           f"the checkpoint is damaged, start the run afresh") from None
    if not isinstance(states, dict) or not all(isinstance(v, dict) for v in states.values()):
        raise WeightsError(f"{path}: the callbacks' state in the header is not a JSON object of objects; "
                           f"the checkpoint is damaged, start the run afresh")
    prefix = "callbacks/"
    for key, value in read_safetensors(path).items():
        if key.startswith(prefix) and key.count("/") >= 2:
            owner, name = key[len(prefix):].split("/", 1)
            states.setdefault(owner, {})[name] = value
    return states


def _plain(value):
    """NumPy scalars as Python numbers (json writes inf/nan as Infinity/NaN and reads them back)."""
    return value.item() if isinstance(value, np.generic) else value


def is_cnnkit_file(path) -> bool:
    """True when ``path`` is a safetensors file written by cnnkit."""
    try:
        _metadata(Path(path))
    except WeightsError:
        return False
    return True
