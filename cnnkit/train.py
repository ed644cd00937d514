"""The fit / evaluate / predict loop: SGD and back-propagation, with the feedback users expect.

Training uses the fused softmax cross-entropy on the class scores; a model that ends in a
``Softmax`` layer is trained on the scores that enter it, and still predicts probabilities.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .callbacks import Callback, CallbackList
from .data import ArrayDataset, Dataset, batches
from .errors import ConfigError, DataError
from .layers import Softmax
from .layers.fusion import backward_layers, forward_layers
from .ops.allocator import keep_freed_memory, release_freed_memory
from .ops.loss import softmax_cross_entropy
from .ops.threads import uses_worker_pool
from .optim import SGD, OneCycleLR, Optimizer, ReduceLROnPlateau


@dataclass
class History:
    """Every metric per epoch: ``history.history["val_accuracy"][-1]`` is the last validation accuracy."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def to_dict(self) -> dict:
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(history={k: list(v) for k, v in data.get("history", {}).items()}, epochs=list(data["epochs"]))


def as_dataset(data, argument: str) -> Dataset:
    """Accept a Dataset or an ``(x, y)`` pair of arrays."""
    if isinstance(data, tuple) and len(data) == 2:
        return ArrayDataset(*data)
    if isinstance(data, Dataset):
        return data
    raise DataError(f"{argument} must be a Dataset or an (x, y) tuple of arrays; received {type(data).__name__}")


def scoring_layers(model) -> list:
    """The layers up to the class scores: all of them, less a final Softmax."""
    layers = model.layers
    return layers[:-1] if layers and isinstance(layers[-1], Softmax) else layers


def frozen_prefix(layers) -> int:
    """How many leading layers form a frozen prefix: 0, or the position of the first layer with a
    trainable parameter when at least one layer before it holds (frozen) parameters.

    :func:`train_step` runs the prefix in inference mode, as Keras' ``base_model(x, training=False)``:
    no caches, no back-propagation into it, batch norm on its running statistics, dropout off.
    A model without frozen layers has an empty prefix and trains exactly as before.
    """
    has_frozen = False
    for position, layer in enumerate(layers):
        params = layer.parameters().values()
        if any(param.trainable for param in params):
            return position if has_frozen else 0
        has_frozen = has_frozen or bool(params)
    return len(layers) if has_frozen else 0


@uses_worker_pool
def train_step(model, optimizer: Optimizer, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """One SGD step on a batch: forward, loss, backward, update. Returns the loss and the scores.

    A frozen prefix (see :func:`frozen_prefix`) runs in inference mode and is not back-propagated.
    From the first step on, freed memory is kept for the next step (:mod:`cnnkit.ops.allocator`).
    """
    keep_freed_memory()
    layers = scoring_layers(model)
    start = frozen_prefix(layers)
    scores = forward_layers(layers, x, training_from=start)
    loss, dscores = softmax_cross_entropy(scores, y)
    model.zero_grad()
    # nothing needs the gradient of the input images
    backward_layers(layers[start:], dscores, need_input_grad=False)
    optimizer.step()
    return loss, scores


@uses_worker_pool
def scores_of(model, x: np.ndarray) -> np.ndarray:
    """Class scores in inference mode (no caches kept)."""
    layers = scoring_layers(model)
    return forward_layers(layers, x, training_from=len(layers))


class _Metrics:
    """Running sums of loss, accuracy and top-5 accuracy over an epoch."""

    def __init__(self, classes: int):
        self.top5 = classes > 5
        self.count = self.loss = self.correct = self.correct5 = 0.0

    def add(self, loss: float, scores: np.ndarray, y: np.ndarray) -> None:
        n = len(y)
        self.count += n
        self.loss += loss * n
        self.correct += float(np.sum(scores.argmax(axis=1) == y))
        if self.top5:
            top = np.argpartition(scores, -5, axis=1)[:, -5:]
            self.correct5 += float(np.sum(top == y[:, None]))

    def result(self, prefix: str = "") -> dict[str, float]:
        count = max(self.count, 1)
        logs = {f"{prefix}loss": self.loss / count, f"{prefix}accuracy": self.correct / count}
        if self.top5:
            logs[f"{prefix}top5_accuracy"] = self.correct5 / count
        return logs


def evaluate(model, data, batch_size: int = 256, prefix: str = "") -> dict[str, float]:
    """Mean loss, accuracy (and top-5 accuracy with more than five classes) over ``data``."""
    dataset = as_dataset(data, "data")
    if len(dataset) == 0:
        raise DataError("evaluate: the data is empty (0 examples); a loss and an accuracy need at least one")
    metrics = _Metrics(model.output_shape[-1])
    for x, y in batches(dataset, batch_size, shuffle=False, prefetch=1):
        scores = scores_of(model, x)
        loss, _ = softmax_cross_entropy(scores, y)
        metrics.add(loss, scores, y)
    return metrics.result(prefix)


def predict(model, data, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for a Dataset or an array of inputs, in inference mode."""
    if isinstance(data, np.ndarray):
        return model.predict(data, batch_size)
    dataset = as_dataset(data, "data")
    outputs = [model.forward(x) for x, _ in batches(dataset, batch_size, shuffle=False, prefetch=1)]
    return np.concatenate(outputs)


def fit(model, train, epochs: int = 1, batch_size: int = 32, optimizer: Optimizer | None = None,
        validation=None, callbacks: list[Callback] = (), seed: int = 0, verbose: int = 1, schedule=None,
        transform=None, checkpoint=None, resume=None) -> History:
    """Train ``model`` on ``train`` with mini-batch gradient descent and back-propagation.

    Args:
        train: a Dataset or ``(x, y)`` with integer labels.
        epochs: passes over the training data (counting any epochs a resumed run already did).
        batch_size: examples per step.
        optimizer: an optimizer from :mod:`cnnkit.optim`; default ``SGD(lr=0.01, momentum=0.9)``.
        validation: data evaluated after every epoch (``val_loss``, ``val_accuracy``).
        callbacks: :mod:`cnnkit.callbacks` objects (early stopping, checkpoints, logs, NaN guard).
        seed: the shuffling order, random transforms and dropout masks of epoch ``e`` are drawn
            from ``(seed, e)``, so a resumed run repeats the uninterrupted one exactly.
        verbose: 0 silent, 1 one line per epoch (and a progress bar on a terminal).
        schedule: a learning-rate schedule; stepped per epoch (``OneCycleLR`` per batch,
            ``ReduceLROnPlateau`` with ``val_loss`` or ``loss``).
        transform: ``t(image, rng)`` applied to each training image (augmentation).
        checkpoint: a path; a training checkpoint (weights, optimizer, schedule, epoch, history and
            the callbacks' state) is written there atomically at the end of every epoch, after the
            callbacks (best model, logs). A path that cannot be written fails before training.
        resume: a training checkpoint to continue from; the callbacks continue from their saved
            state (the best value so far, patience) and the logs are rewritten from its history.
            The optimizer's state, learning rate included, is the checkpoint's.
    """
    from .checkpoint import load_training_checkpoint, read_callback_states, save_training_checkpoint
    train_data = _non_empty(as_dataset(train, "train"), "train")
    val_data = _non_empty(as_dataset(validation, "validation"), "validation") if validation is not None else None
    _check_fit_arguments(epochs, batch_size, verbose)
    if checkpoint is not None:
        _check_checkpoint_path(checkpoint)
    optimizer = optimizer if optimizer is not None else SGD(lr=0.01, momentum=0.9)
    optimizer.bind(model.parameters())
    hooks = CallbackList(callbacks, model, verbose)
    history, start = History(), 0
    if resume is not None:
        start, history = load_training_checkpoint(resume, model, optimizer, schedule)
        hooks.load_state_dict(read_callback_states(resume))
        hooks.on_resume(history)
    model.stop_training = False
    try:
        hooks.on_train_begin()
        for epoch in range(start, epochs):
            logs = _run_epoch(model, optimizer, train_data, epoch, epochs, batch_size, seed, verbose,
                              schedule, transform, hooks)
            if model.stop_training and hooks.failed:
                break
            if val_data is not None:
                logs.update(evaluate(model, val_data, prefix="val_"))
            _step_epoch_schedule(schedule, logs)
            history.append(epoch + 1, logs)
            if verbose:
                say(_epoch_line(epoch + 1, epochs, logs))
            # The best model and the logs first, the checkpoint last: a kill in between makes a
            # resumed run redo this epoch (same seed, same result) and rewrite the logs from the
            # checkpoint's history, so no epoch is lost from the files or written twice.
            hooks.on_epoch_end(epoch + 1, logs)
            if checkpoint is not None:
                save_training_checkpoint(checkpoint, model, optimizer, schedule, epoch + 1, history,
                                         callbacks=hooks.state_dict())
            if model.stop_training:
                break
        hooks.on_train_end()
    finally:
        release_freed_memory()   # the steps' volumes, kept for reuse while training
    return history


def say(line: str) -> None:
    """Print ``line`` to standard output; when nobody reads it any more (``cnnkit train | head -1``),
    stop printing and carry on, as training's files matter more than its progress lines."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """Point a standard output whose reader has gone at /dev/null: later prints, and Python's flush
    at exit, then succeed instead of raising BrokenPipeError."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # a stream without a file descriptor
        sys.stdout = open(os.devnull, "w")
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _non_empty(dataset: Dataset, argument: str) -> Dataset:
    if len(dataset) == 0:
        raise DataError(f"fit: the {argument} data is empty (0 examples); give it at least one example")
    return dataset


def _check_checkpoint_path(checkpoint) -> None:
    """Fail before training, not after the first epoch, when the checkpoint cannot be written."""
    from .io import check_writable
    path = Path(checkpoint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path)
    except OSError as error:
        raise ConfigError(f"fit: checkpoint={str(checkpoint)!r} cannot be written "
                          f"({error.strerror or error}); give a path in a writable folder") from None


def _check_fit_arguments(epochs, batch_size, verbose) -> None:
    for name, value, minimum in (("epochs", epochs, 0), ("batch_size", batch_size, 1), ("verbose", verbose, 0)):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"fit: {name} must be an int >= {minimum}; received {name}={value!r}")


def _run_epoch(model, optimizer, data, epoch, epochs, batch_size, seed, verbose, schedule, transform, hooks):
    rng = np.random.default_rng([seed, epoch])
    _reseed_layers(model, seed, epoch)
    metrics = _Metrics(model.output_shape[-1])
    started = time.perf_counter()
    stream = batches(data, batch_size, shuffle=True, rng=rng, transform=transform)
    with _progress(stream, epoch, epochs, verbose) as bar:
        for step, (x, y) in enumerate(stream, start=1):
            loss, scores = train_step(model, optimizer, x, y)
            metrics.add(loss, scores, y)
            if isinstance(schedule, OneCycleLR):
                schedule.step()
            logs = metrics.result()
            hooks.on_batch_end(epoch + 1, step, {"loss": loss, **logs})
            _advance(bar, logs, metrics.count / (time.perf_counter() - started))
            if model.stop_training:
                break
    stream.close()
    result = metrics.result()
    result["images_per_second"] = metrics.count / max(time.perf_counter() - started, 1e-9)
    result["lr"] = float(optimizer.lr)   # the record shows the rate each epoch really ran at
    return result


def _reseed_layers(model, seed: int, epoch: int) -> None:
    """Give each layer that draws random numbers (dropout) a generator of its own for this epoch."""
    for index, layer in enumerate(model.layers):
        if hasattr(layer, "_rng"):
            layer._rng = np.random.default_rng([seed, epoch, index])


def _step_epoch_schedule(schedule, logs: dict[str, float]) -> None:
    if schedule is None or isinstance(schedule, OneCycleLR):
        return
    if isinstance(schedule, ReduceLROnPlateau):
        schedule.step(logs.get("val_loss", logs["loss"]))
    else:
        schedule.step()


def _progress(stream, epoch: int, epochs: int, verbose: int):
    """A tqdm bar on a terminal; a no-op context elsewhere or when ``verbose=0``."""
    from tqdm import tqdm
    show = bool(verbose) and sys.stderr.isatty()
    return tqdm(total=len(stream), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                disable=not show)


def _advance(bar, logs: dict[str, float], images_per_second: float) -> None:
    if not bar.disable:
        bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs['accuracy']:.4f}",
                        img_s=f"{images_per_second:.0f}", refresh=False)
        bar.update(1)


def _epoch_line(epoch: int, epochs: int, logs: dict[str, float]) -> str:
    parts = [f"epoch {epoch}/{epochs}"]
    for key, value in logs.items():
        parts.append(f"{key} {value:.0f}" if key == "images_per_second" else
                     f"{key} {value:.3g}" if key == "lr" else f"{key} {value:.4f}")
    return "  ".join(parts).replace("images_per_second", "img/s")
