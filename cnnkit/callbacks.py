"""Callbacks that watch training: early stopping, best-model checkpoints, metric logs, a NaN guard.

A callback receives ``on_train_begin()``, ``on_batch_end(epoch, step, logs)``,
``on_epoch_end(epoch, logs)`` and ``on_train_end()``; it may stop training by setting
``model.stop_training = True``. Epochs are counted from 1.

What a callback remembers across epochs (the best value so far, a patience counter) is its
``state_dict()``: ``fit`` stores it in the training checkpoint and gives it back with
``load_state_dict`` on resume, so a resumed run judges "better" against the whole run. A resumed
callback also gets ``on_resume(history)`` before ``on_train_begin``; the logs use it to rewrite
their file from the checkpoint's history, so an epoch that a kill cut short is neither lost
nor written twice.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .io import atomic_open

MODES = ("auto", "min", "max")


class Callback:
    """Base class: every hook does nothing."""

    model = None
    #: set by a callback that stopped training because something went wrong
    failed = False

    def on_resume(self, history) -> None:
        """Called once, before ``on_train_begin``, when ``fit`` continues from a checkpoint."""

    def on_train_begin(self) -> None: ...

    def on_batch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self) -> None: ...

    def state_dict(self) -> dict:
        """What this callback must remember across a resume: JSON values, or NumPy arrays."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


class CallbackList:
    """Calls each callback's hook in order."""

    def __init__(self, callbacks, model, verbose: int):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise ConfigError(f"fit: callbacks must be cnnkit.callbacks.Callback objects; "
                                  f"received {type(callback).__name__}")
            callback.model = model
            callback.verbose = verbose

    @property
    def failed(self) -> bool:
        return any(callback.failed for callback in self.callbacks)

    def _keys(self) -> list[str]:
        """A name per callback that survives adding callbacks of other kinds: class name and rank."""
        seen: dict[str, int] = {}
        keys = []
        for callback in self.callbacks:
            name = type(callback).__name__
            seen[name] = seen.get(name, 0) + 1
            keys.append(f"{name}{seen[name]}")
        return keys

    def state_dict(self) -> dict[str, dict]:
        """Each callback's state under its key (empty states left out)."""
        states = {key: callback.state_dict() for key, callback in zip(self._keys(), self.callbacks)}
        return {key: state for key, state in states.items() if state}

    def load_state_dict(self, states: dict[str, dict]) -> None:
        """Give each callback the state saved under its key; a callback new to the run starts afresh."""
        for key, callback in zip(self._keys(), self.callbacks):
            if key in states:
                callback.load_state_dict(states[key])

    def on_resume(self, history) -> None:
        for callback in self.callbacks:
            callback.on_resume(history)

    def on_train_begin(self) -> None:
        for callback in self.callbacks:
            callback.on_train_begin()

    def on_batch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_batch_end(epoch, step, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_end(self) -> None:
        for callback in self.callbacks:
            callback.on_train_end()


class _Monitor:
    """Tracks the best value of one metric (lower is better for losses, higher otherwise)."""

    def __init__(self, monitor: str, mode: str, min_delta: float, owner: str):
        if mode not in MODES:
            raise ConfigError(f"{owner}: mode must be one of {MODES}; received mode={mode!r}")
        self.monitor = monitor
        self.minimise = mode == "min" or (mode == "auto" and "acc" not in monitor)
        self.min_delta = abs(min_delta)
        self.best = math.inf if self.minimise else -math.inf
        self.owner = owner

    def value(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            raise ConfigError(f"{self.owner}: monitor={self.monitor!r} is not among the epoch's metrics "
                              f"{sorted(logs)}; pass validation data to fit() or monitor another metric")
        return logs[self.monitor]

    def improved(self, value: float) -> bool:
        better = value < self.best - self.min_delta if self.minimise else value > self.best + self.min_delta
        if better:
            self.best = value
        return better

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "minimise": self.minimise, "best": self.best}

    def load_state_dict(self, state: dict) -> bool:
        """Take the saved best value when it was kept for the same metric, the same way; say if so."""
        same = state.get("monitor") == self.monitor and state.get("minimise") == self.minimise
        if same:
            self.best = float(state["best"])
        return same


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally restore the best weights."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best_weights: bool = False):
        self._monitor = _Monitor(monitor, mode, min_delta, "EarlyStopping")
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.stopped_epoch = None
        self._best_state = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self._monitor.improved(self._monitor.value(logs)):
            self.wait = 0
            if self.restore_best_weights:
                self._best_state = {k: v.copy() for k, v in self.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self) -> None:
        if self.stopped_epoch is not None and self._best_state is not None:
            self.model.load_state_dict(self._best_state)

    def state_dict(self) -> dict:
        state = {**self._monitor.state_dict(), "wait": self.wait}
        for name, value in (self._best_state or {}).items():
            state[f"best_weights/{name}"] = value
        return state

    def load_state_dict(self, state: dict) -> None:
        if not self._monitor.load_state_dict(state):
            return
        self.wait = int(state.get("wait", 0))
        prefix = "best_weights/"
        weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if self.restore_best_weights and weights:
            self._best_state = {name: np.array(value) for name, value in weights.items()}


class ModelCheckpoint(Callback):
    """Save the model (architecture + weights, atomically) after an epoch that improves ``monitor``,
    or after every epoch with ``save_best_only=False``."""

    def __init__(self, path, monitor: str = "val_loss", mode: str = "auto", save_best_only: bool = True):
        self.path = Path(path)
        self._monitor = _Monitor(monitor, mode, 0.0, "ModelCheckpoint")
        self.save_best_only = save_best_only
        self.saved_epoch = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if not self.save_best_only or self._monitor.improved(self._monitor.value(logs)):
            self.model.save(self.path)
            self.saved_epoch = epoch

    def state_dict(self) -> dict:
        return {**self._monitor.state_dict(), "saved_epoch": self.saved_epoch}

    def load_state_dict(self, state: dict) -> None:
        if self._monitor.load_state_dict(state):
            self.saved_epoch = state.get("saved_epoch")


class _EpochLog(Callback, ABC):
    """A file that gets one record per epoch; started afresh unless ``append``.

    A resumed run rewrites the file, atomically, from the checkpoint's history: the records of
    the epochs the checkpoint holds, whatever a kill left in the file.
    """

    def __init__(self, path, append: bool = False):
        self.path = Path(path)
        self.append = append
        self._replay = None

    def on_resume(self, history) -> None:
        self._replay = [{"epoch": epoch, **{key: values[i] for key, values in history.history.items()
                                            if i < len(values)}}
                        for i, epoch in enumerate(history.epochs)]

    def on_train_begin(self) -> None:
        if self._replay is not None:
            with atomic_open(self.path, "w") as handle:
                handle.write(self.format(self._replay, header=True))
        elif not self.append and self.path.exists():
            self.path.unlink()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            handle.write(self.format([{"epoch": epoch, **logs}], header=new))

    @abstractmethod
    def format(self, records: list[dict], header: bool) -> str:
        """The text of ``records``, with the file's header first when ``header``."""


class CSVLogger(_EpochLog):
    """Append one row of metrics per epoch to a CSV file (header written once)."""

    def format(self, records: list[dict], header: bool) -> str:
        if not records:
            return ""
        # Rows added to a file keep its columns (a file begun by an older cnnkit may lack some).
        fields = list(records[0]) if header else self._columns() or list(records[0])
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields, restval="", extrasaction="ignore")
        if header:
            writer.writeheader()
        writer.writerows(records)
        return text.getvalue()

    def _columns(self) -> list[str]:
        with self.path.open(newline="") as handle:
            return next(csv.reader(handle), [])


class JSONLinesLogger(_EpochLog):
    """Append one JSON object of metrics per epoch to a ``.jsonl`` file."""

    def format(self, records: list[dict], header: bool) -> str:
        return "".join(json.dumps(record) + "\n" for record in records)


class TerminateOnNaN(Callback):
    """Stop at the first step whose loss is not finite, say which step, and write nothing after it.

    The epoch that went non-finite is not recorded, so checkpoints keep the last good weights.
    """

    def __init__(self, announce: bool = True):
        self.announce = announce   # False: the caller reports ``bad_step`` in its own words
        self.bad_step = None
        self.bad_loss = None

    def on_batch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        loss = logs.get("loss", 0.0)
        if not math.isfinite(loss):
            self.bad_step, self.bad_loss = (epoch, step), loss
            self.failed = True
            self.model.stop_training = True
            if self.announce:
                print(f"TerminateOnNaN: the loss became {loss} at epoch {epoch}, step {step}; training "
                      f"stopped and nothing from this epoch was saved", file=sys.stderr)
