"""Callbacks that watch training: early stopping, best-model checkpoints, metric logs, a NaN guard.

A callback receives ``on_train_begin()``, ``on_batch_end(epoch, step, logs)``,
``on_epoch_end(epoch, logs)`` and ``on_train_end()``; it may stop training by setting
``model.stop_training = True``. Epochs are counted from 1.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from .errors import ConfigError

MODES = ("auto", "min", "max")


class Callback:
    """Base class: every hook does nothing."""

    model = None
    #: set by a callback that stopped training because something went wrong
    failed = False

    def on_train_begin(self) -> None: ...

    def on_batch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self) -> None: ...


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


class _EpochLog(Callback):
    """A file that gets one record per epoch; started afresh unless ``append``."""

    def __init__(self, path, append: bool = False):
        self.path = Path(path)
        self.append = append

    def on_train_begin(self) -> None:
        if not self.append and self.path.exists():
            self.path.unlink()


class CSVLogger(_EpochLog):
    """Append one row of metrics per epoch to a CSV file (header written once)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        fields = ["epoch", *logs]
        new = not self.path.exists()
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerow({"epoch": epoch, **logs})


class JSONLinesLogger(_EpochLog):
    """Append one JSON object of metrics per epoch to a ``.jsonl`` file."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"epoch": epoch, **logs}) + "\n")


class TerminateOnNaN(Callback):
    """Stop at the first step whose loss is not finite, say which step, and write nothing after it.

    The epoch that went non-finite is not recorded, so checkpoints keep the last good weights.
    """

    def __init__(self):
        self.bad_step = None

    def on_batch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        loss = logs.get("loss", 0.0)
        if not math.isfinite(loss):
            self.bad_step = (epoch, step)
            self.failed = True
            self.model.stop_training = True
            print(f"TerminateOnNaN: the loss became {loss} at epoch {epoch}, step {step}; training stopped "
                  f"and nothing from this epoch was saved", file=sys.stderr)
