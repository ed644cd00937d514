"""The cnnkit file: architecture as JSON in a safetensors header, beside the weights, in one file.

A model file holds a model's state dict as tensors and its architecture (``get_config()``: a
``Sequential``'s chain, or a graph with ``"class": "Model"`` and its own ``"format"``) in the
header. A training checkpoint is the same file with the weights under ``model/`` and the
optimizer's and schedule's state, the epoch, the history and the callbacks' state beside them.

This module writes both and reads what needs no model class: headers, and a checkpoint's state
into a model that already exists. :class:`TrainingCheckpoint` is the component ``fit`` is given
to write and resume training checkpoints. Rebuilding a model from a file (:func:`cnnkit.load`)
sits above the model classes, in :mod:`cnnkit.checkpoint`. Every write goes to a temporary
file renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ConfigError, WeightsError
from .history import History
from .io import check_writable, read_safetensors, read_safetensors_metadata, write_safetensors

MODEL_FORMAT = "cnnkit-model"
TRAINING_FORMAT = "cnnkit-training"
FORMAT_VERSION = "1"
#: where a training checkpoint keeps the model's tensors
MODEL_PREFIX = "model/"


def save_model(model, path) -> None:
    """Write ``model`` (architecture and every parameter and buffer) to ``path``."""
    metadata = {"format": MODEL_FORMAT, "version": FORMAT_VERSION, "architecture": json.dumps(model.get_config())}
    write_safetensors(_with_folder(path), dict(model.state_dict()), metadata)


def cnnkit_metadata(path) -> dict[str, str]:
    """The header of a cnnkit file (model or training checkpoint); a WeightsError for any other file."""
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") not in (MODEL_FORMAT, TRAINING_FORMAT) or "architecture" not in metadata:
        raise WeightsError(f"{path}: not a cnnkit model file (no cnnkit architecture in its header); "
                           f"load plain weights with cnnkit.io.read_safetensors and model.load_state_dict")
    return metadata


def tensor_prefix(metadata: dict[str, str]) -> str:
    """The prefix of the model's tensors in a file with this header (``model/`` in a checkpoint)."""
    return MODEL_PREFIX if metadata["format"] == TRAINING_FORMAT else ""


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


def is_cnnkit_file(path) -> bool:
    """True when ``path`` is a safetensors file written by cnnkit."""
    try:
        cnnkit_metadata(Path(path))
    except WeightsError:
        return False
    return True


class TrainingCheckpoint:
    """The training checkpoints of one ``fit``: the component that writes and reads them.

    ``fit`` is given this object (``Model.fit(checkpoint=path, resume=path)`` makes it) and calls
    :meth:`check` before training, :meth:`restore` before the first epoch and :meth:`save` at the
    end of each; it knows nothing of the file format.

    Args:
        save_to: where a checkpoint (weights, optimizer, schedule, epoch, history and the
            callbacks' state) is written, atomically, after every epoch; None writes none.
        resume_from: a checkpoint to continue from; None starts afresh.
    """

    def __init__(self, save_to=None, resume_from=None):
        self.save_to = save_to
        self.resume_from = resume_from

    def check(self) -> None:
        """Fail before training, not after the first epoch, when :attr:`save_to` cannot be written."""
        if self.save_to is None:
            return
        path = Path(self.save_to)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_writable(path)
        except OSError as error:
            raise ConfigError(f"fit: checkpoint={str(self.save_to)!r} cannot be written "
                              f"({error.strerror or error}); give a path in a writable folder") from None

    def restore(self, model, optimizer, schedule) -> tuple[int, History, dict[str, dict]] | None:
        """Load :attr:`resume_from` into ``model``, ``optimizer`` and ``schedule``; return the epochs
        done, the history and the callbacks' states, or None when there is nothing to resume."""
        if self.resume_from is None:
            return None
        epoch, history = load_training_checkpoint(self.resume_from, model, optimizer, schedule)
        return epoch, history, read_callback_states(self.resume_from)

    def save(self, model, optimizer, schedule, epoch: int, history: History, callbacks: dict[str, dict]) -> None:
        """Write the state after ``epoch`` finished epochs to :attr:`save_to` (nothing when it is None)."""
        if self.save_to is not None:
            save_training_checkpoint(self.save_to, model, optimizer, schedule, epoch, history, callbacks=callbacks)

    def __repr__(self) -> str:
        return f"TrainingCheckpoint(save_to={self.save_to!r}, resume_from={self.resume_from!r})"


def save_training_checkpoint(path, model, optimizer, schedule, epoch: int, history: History,
                             callbacks: dict[str, dict] | None = None) -> None:
    """Write weights, optimizer and schedule state, the finished epoch count, the history and the
    callbacks' states (``CallbackList.state_dict()``: best values, patience counters)."""
    tensors = {f"{MODEL_PREFIX}{key}": value for key, value in model.state_dict().items()}
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


def load_training_checkpoint(path, model, optimizer, schedule) -> tuple[int, History]:
    """Restore a training checkpoint into ``model``, ``optimizer`` and ``schedule``; return (epoch, history)."""
    metadata = cnnkit_metadata(path)
    if metadata["format"] != TRAINING_FORMAT:
        raise WeightsError(f"{path}: a model file, not a training checkpoint; resume needs the file that "
                           f"fit(checkpoint=...) writes")
    if metadata["optimizer_class"] != type(optimizer).__name__:
        raise WeightsError(f"{path}: saved with {metadata['optimizer_class']}, but fit was given "
                           f"{type(optimizer).__name__}; resume with the same optimizer")
    tensors = read_safetensors(path)
    model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)})
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
