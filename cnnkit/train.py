"""The fit / evaluate / predict loop: SGD and back-propagation, with the feedback users expect.

Training uses the fused softmax cross-entropy on the class scores; a model that ends in a
``Softmax`` layer is trained on the scores that enter it, and still predicts probabilities.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .callbacks import Callback, CallbackList
from .data import ArrayDataset, Dataset, batches, subset
from .distributed import MPI
from .errors import ConfigError, DataError
from .history import History   # also cnnkit.train.History, where it lived before
from .layers import Softmax
from .executor import Tape, run_backward, run_forward
from .ops.loss import softmax_cross_entropy
from .ops.runtime import entry_point, folding_batch_norm, runtime
from .optim import SGD, OneCycleLR, Optimizer, ReduceLROnPlateau


class Checkpoints(Protocol):
    """What ``fit`` needs of the training checkpoints it is given (:class:`cnnkit.model_file.TrainingCheckpoint`
    is the one ``Model.fit(checkpoint=..., resume=...)`` makes); ``fit`` never reads or writes files itself."""

    def check(self) -> None:
        """Raise a CnnkitError, before training, when the checkpoints cannot be written."""

    def restore(self, model, optimizer, schedule) -> tuple[int, History, dict[str, dict]] | None:
        """Load the state to resume from into the objects; return (epochs done, history, callbacks'
        states), or None to start afresh."""

    def save(self, model, optimizer, schedule, epoch: int, history: History, callbacks: dict[str, dict]) -> None:
        """Record the state after ``epoch`` finished epochs."""


def as_dataset(data, argument: str) -> Dataset:
    """Accept a Dataset or an ``(x, y)`` pair of arrays."""
    if isinstance(data, tuple) and len(data) == 2:
        return ArrayDataset(*data)
    if isinstance(data, Dataset):
        return data
    raise DataError(f"{argument} must be a Dataset or an (x, y) tuple of arrays; received {type(data).__name__}")


def scoring_tensors(model) -> list[int]:
    """The plan's tensors that hold the class scores: each output, or the input of a final Softmax
    over the last axis (one over another axis is trained through, as any layer)."""
    tensors = []
    for output in model.plan.outputs:
        position = model.plan.producer.get(output)
        step = model.plan.steps[position] if position is not None else None
        scored = step is not None and isinstance(step.layer, Softmax) and step.layer.over_last_axis
        tensors.append(step.inputs[0] if scored else output)
    return tensors


def training_steps(model) -> frozenset[int]:
    """The steps a training step runs in training mode: all but a frozen base.

    The frozen base is every step that depends on no trainable parameter (itself included), when
    at least one of them holds (frozen) parameters. It runs in inference mode, as Keras'
    ``base_model(x, training=False)``: no contexts kept, no back-propagation into it, batch norm
    on its running statistics, dropout off. A model without frozen layers trains in full. In a
    ``Sequential`` the base is the frozen prefix of the chain.
    """
    steps = model.plan.steps
    depends_on_trainable: list[bool] = []
    for step in steps:
        own = any(param.trainable for param in step.layer.parameters().values())
        inputs = (model.plan.producer.get(t) for t in step.inputs)
        depends_on_trainable.append(own or any(p is not None and depends_on_trainable[p] for p in inputs))
    base = [step for step, trained in zip(steps, depends_on_trainable) if not trained]
    if not any(step.layer.parameters() for step in base):
        return frozenset(range(len(steps)))
    return frozenset(step.position for step, trained in zip(steps, depends_on_trainable) if trained)


@entry_point(reuse_memory=True)
def train_step(model, optimizer: Optimizer, x, y, distributed: MPI | None = None,
               total: int | None = None, loss_weights=None) -> tuple[float, np.ndarray]:
    """One SGD step on a batch: forward, loss, backward, update. Returns the loss and the scores.

    The loss is softmax cross-entropy on the class scores of each output (with several outputs,
    ``y`` is a list of label arrays and the loss is the sum weighted by ``loss_weights``, default
    1 each; the scores returned are a list). A frozen base (see :func:`training_steps`) runs in
    inference mode and is not back-propagated. While the step runs, malloc keeps the memory it
    frees for reuse (:mod:`cnnkit.ops.allocator`); a loop of steps of your own keeps it from step
    to step inside ``with cnnkit.runtime():``, as :func:`fit` does. With ``distributed``,
    ``(x, y)`` is this process's part of a batch of ``total`` examples: the gradients are summed
    over the processes before the update (:meth:`MPI.backward`), and the loss returned is the
    whole batch's.
    """
    plan, targets = model.plan, scoring_tensors(model)
    several = len(targets) > 1
    labels = list(y) if several else [y]
    weights = _loss_weights(loss_weights, len(targets))
    tape = Tape()
    scores = run_forward(plan, model._arrays(x), targets, training_steps(model), tape, folding_batch_norm())
    loss, gradients = 0.0, {}
    for tensor, score, label, weight in zip(targets, scores, labels, weights):
        part, dscores = softmax_cross_entropy(score, label)
        loss += weight * part
        if weight != 1.0:
            dscores *= weight
        gradients[tensor] = gradients[tensor] + dscores if tensor in gradients else dscores
    model.zero_grad()

    def propagate(on_layer_done=None):
        # nothing needs the gradient of the input images
        run_backward(plan, tape, gradients, input_gradients=False, on_layer_done=on_layer_done)

    if distributed is None:
        propagate()
    else:
        layers = [plan.steps[p].layer for p in tape.ran]
        loss = distributed.backward(propagate, list(dict.fromkeys(layers)), loss, list(gradients.values()),
                                    total if total is not None else len(labels[0]))
    optimizer.step()
    return loss, (scores if several else scores[0])


def _loss_weights(weights, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ConfigError(f"loss_weights: give one weight per output ({count}); received {len(weights)}")
    return weights


@entry_point
def scores_of(model, x: np.ndarray) -> np.ndarray:
    """Class scores in inference mode (no contexts kept)."""
    return run_forward(model.plan, model._arrays(x), scoring_tensors(model)[:1], fold=folding_batch_norm())[0]


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

    def reduce(self, distributed: MPI | None) -> "_Metrics":
        """The sums over all processes (unchanged without ``distributed``)."""
        if distributed is not None:
            sums = distributed.sum(np.array([self.count, self.loss, self.correct, self.correct5], np.float64))
            self.count, self.loss, self.correct, self.correct5 = (float(v) for v in sums)
        return self

    def result(self, prefix: str = "") -> dict[str, float]:
        count = max(self.count, 1)
        logs = {f"{prefix}loss": self.loss / count, f"{prefix}accuracy": self.correct / count}
        if self.top5:
            logs[f"{prefix}top5_accuracy"] = self.correct5 / count
        return logs


def evaluate(model, data, batch_size: int = 256, prefix: str = "", distributed: MPI | None = None
             ) -> dict[str, float]:
    """Mean loss, accuracy (and top-5 accuracy with more than five classes) over ``data``.

    With ``distributed`` each process evaluates a consecutive share of ``data`` and the sums are
    added over the processes: every process returns the numbers of the whole data.
    """
    require_one_output(model, "evaluate")
    dataset = as_dataset(data, "data")
    if len(dataset) == 0:
        raise DataError("evaluate: the data is empty (0 examples); a loss and an accuracy need at least one")
    if distributed is not None:
        dataset = subset(dataset, np.array_split(np.arange(len(dataset)), distributed.size)[distributed.rank])
    metrics = _Metrics(model.output_shape[-1])
    if len(dataset):   # a process may have no share of a data set smaller than the processes
        for x, y in batches(dataset, batch_size, shuffle=False, prefetch=1):
            scores = scores_of(model, x)
            loss, _ = softmax_cross_entropy(scores, y)
            metrics.add(loss, scores, y)
    return metrics.reduce(distributed).result(prefix)


def predict(model, data, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for a Dataset or an array of inputs, in inference mode."""
    if isinstance(data, np.ndarray):
        return model.predict(data, batch_size)
    dataset = as_dataset(data, "data")
    outputs = [model.forward(x) for x, _ in batches(dataset, batch_size, shuffle=False, prefetch=1)]
    return np.concatenate(outputs)


def fit(model, train, epochs: int = 1, batch_size: int = 32, optimizer: Optimizer | None = None,
        validation=None, callbacks: list[Callback] = (), seed: int = 0, verbose: int = 1, schedule=None,
        transform=None, checkpoints: Checkpoints | None = None, distributed: MPI | None = None) -> History:
    """Train ``model`` on ``train`` with mini-batch gradient descent and back-propagation.

    Args:
        train: a Dataset or ``(x, y)`` with integer labels.
        epochs: passes over the training data (counting any epochs a resumed run already did).
        batch_size: examples per step (with ``distributed``: over all processes together).
        optimizer: an optimizer from :mod:`cnnkit.optim`; default ``SGD(lr=0.01, momentum=0.9)``.
        validation: data evaluated after every epoch (``val_loss``, ``val_accuracy``).
        callbacks: :mod:`cnnkit.callbacks` objects (early stopping, checkpoints, logs, NaN guard).
        seed: the shuffling order, random transforms and dropout masks of epoch ``e`` are drawn
            from ``(seed, e)``, so a resumed run repeats the uninterrupted one exactly.
        verbose: 0 silent, 1 one line per epoch (and a progress bar on a terminal).
        schedule: a learning-rate schedule; stepped per epoch (``OneCycleLR`` per batch,
            ``ReduceLROnPlateau`` with ``val_loss`` or ``loss``).
        transform: ``t(image, rng)`` applied to each training image (augmentation).
        checkpoints: the training checkpoints (:class:`Checkpoints`; ``Model.fit(checkpoint=path,
            resume=path)`` makes a :class:`cnnkit.model_file.TrainingCheckpoint`): checked before
            training, restored before the first epoch (the callbacks continue from their saved state,
            the best value so far and patience, and the logs are rewritten from its history; the
            optimizer's state, learning rate included, is the checkpoint's), and saved at the end of
            every epoch, after the callbacks (best model, logs).
        distributed: :class:`cnnkit.distributed.MPI` for data-parallel training in processes
            started by ``mpiexec``: each process trains on its share of every batch, the gradients
            are averaged, batch norm uses the whole batch's statistics; rank 0 alone restores and
            saves the checkpoints (the restored state is broadcast), prints and runs the callbacks.
            Metrics, loss and validation are those of all processes together.
    """
    train_data = _non_empty(as_dataset(train, "train"), "train")
    val_data = _non_empty(as_dataset(validation, "validation"), "validation") if validation is not None else None
    require_one_output(model, "fit")
    _check_fit_arguments(epochs, batch_size, verbose, distributed, checkpoints)
    root = distributed is None or distributed.is_root
    if not root:   # one process speaks and writes: rank 0
        verbose, callbacks, checkpoints = 0, (), None
    with _failing_together(distributed):
        if checkpoints is not None:
            checkpoints.check()
        optimizer = optimizer if optimizer is not None else SGD(lr=0.01, momentum=0.9)
        optimizer.bind(model.parameters())
        hooks = CallbackList(callbacks, model, verbose)
        start, history = _resume(checkpoints, model, optimizer, schedule, hooks)
        model.stop_training = False
        run = _Run(model, optimizer, train_data, epochs, batch_size, seed, verbose, schedule, transform, hooks,
                   distributed)
        with runtime():   # the steps' volumes are kept for reuse while training, given back at the end
            hooks.on_train_begin()
            if distributed is not None:   # after on_train_begin: a callback may set the learning rate
                start, history = _broadcast_start(distributed, model, optimizer, schedule, start, history)
            with distributed.training() if distributed is not None else nullcontext():
                _run_epochs(run, val_data, start, history, checkpoints)
            hooks.on_train_end()
            if distributed is not None:   # a callback may have restored earlier weights on rank 0
                _broadcast_weights(distributed, model)
    return history


@contextmanager
def _failing_together(distributed: MPI | None):
    """An error in one of several processes ends them all (naming it): the others would wait
    for it for ever. Alone, the error is simply raised."""
    try:
        yield
    except BaseException as error:
        if distributed is not None:
            distributed.fail(error)
        raise


@dataclass
class _Run:
    """What every epoch of a ``fit`` needs."""

    model: object
    optimizer: Optimizer
    data: Dataset
    epochs: int
    batch_size: int
    seed: int
    verbose: int
    schedule: object
    transform: object
    hooks: CallbackList
    distributed: MPI | None


def _resume(checkpoints: Checkpoints | None, model, optimizer, schedule, hooks) -> tuple[int, History]:
    """The epoch to start from and the history so far: a checkpoint's, or none."""
    restored = checkpoints.restore(model, optimizer, schedule) if checkpoints is not None else None
    if restored is None:
        return 0, History()
    start, history, callback_states = restored
    hooks.load_state_dict(callback_states)
    hooks.on_resume(history)
    return start, history


def _broadcast_start(distributed: MPI, model, optimizer, schedule, start: int, history: History
                     ) -> tuple[int, History]:
    """Rank 0's weights, optimizer and schedule state, epoch and history on every process."""
    state = distributed.broadcast({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "schedule": schedule.state_dict() if schedule is not None else None,
                                   "start": start, "history": history.to_dict()})
    if not distributed.is_root:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
    return state["start"], History.from_dict(state["history"])


def _broadcast_weights(distributed: MPI, model) -> None:
    state = distributed.broadcast(model.state_dict())
    if not distributed.is_root:
        model.load_state_dict(state)


def _run_epochs(run: _Run, val_data, start: int, history: History, checkpoints: Checkpoints | None) -> None:
    model, hooks = run.model, run.hooks
    for epoch in range(start, run.epochs):
        logs, failed = _run_epoch(run, epoch)
        if model.stop_training and failed:
            break
        if val_data is not None:
            logs.update(evaluate(model, val_data, prefix="val_", distributed=run.distributed))
        _step_epoch_schedule(run.schedule, logs)
        history.append(epoch + 1, logs)
        if run.verbose:
            say(_epoch_line(epoch + 1, run.epochs, logs))
        # The best model and the logs first, the checkpoint last: a kill in between makes a
        # resumed run redo this epoch (same seed, same result) and rewrite the logs from the
        # checkpoint's history, so no epoch is lost from the files or written twice.
        hooks.on_epoch_end(epoch + 1, logs)
        if checkpoints is not None:
            checkpoints.save(model, run.optimizer, run.schedule, epoch + 1, history, hooks.state_dict())
        _agree_to_stop(run)
        if model.stop_training:
            break


def _agree_to_stop(run: _Run) -> bool:
    """Whether a callback failed; with ``distributed``, every process takes rank 0's callbacks'
    decisions (stop, failed), which only rank 0 runs."""
    failed = run.hooks.failed
    if run.distributed is not None:
        stop, failed = run.distributed.decide(run.model.stop_training, failed)
        run.model.stop_training = stop
    return failed


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


def require_one_output(model, what: str) -> None:
    """``fit`` and ``evaluate`` score one output with one set of labels; a model with several
    outputs trains with :func:`train_step` and ``loss_weights``."""
    if len(model.plan.outputs) != 1:
        raise ConfigError(f"{what}: {model.name} has {len(model.plan.outputs)} outputs, and {what} scores one with "
                          f"one set of labels; train it with cnnkit.train.train_step(model, optimizer, x, "
                          f"[y1, y2, ...], loss_weights=[...]) in a loop of your own")


def _check_fit_arguments(epochs, batch_size, verbose, distributed, checkpoints) -> None:
    for name, value, minimum in (("epochs", epochs, 0), ("batch_size", batch_size, 1), ("verbose", verbose, 0)):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"fit: {name} must be an int >= {minimum}; received {name}={value!r}")
    if checkpoints is not None and not all(callable(getattr(checkpoints, m, None))
                                           for m in ("check", "restore", "save")):
        raise ConfigError(f"fit: checkpoints must be a TrainingCheckpoint (cnnkit.model_file) or None; received "
                          f"{type(checkpoints).__name__}; to give paths, call model.fit(checkpoint=path, resume=path)")
    if distributed is not None and not isinstance(distributed, MPI):
        raise ConfigError(f"fit: distributed must be None or cnnkit.distributed.MPI(); received "
                          f"{type(distributed).__name__}")
    if distributed is not None and batch_size < distributed.size:
        raise ConfigError(f"fit: batch_size={batch_size} is the batch of all {distributed.size} processes "
                          f"together, so each would get less than one example; use batch_size >= "
                          f"{distributed.size}")


def _run_epoch(run: _Run, epoch: int) -> tuple[dict[str, float], bool]:
    """One pass over the data; returns the epoch's metrics and whether a callback failed."""
    model, distributed = run.model, run.distributed
    rank, processes = (distributed.rank, distributed.size) if distributed is not None else (0, 1)
    rng = np.random.default_rng([run.seed, epoch])
    _reseed_layers(model, run.seed, epoch, rank)
    metrics = _Metrics(model.output_shape[-1])
    started = time.perf_counter()
    failed = False
    stream = batches(run.data, run.batch_size, shuffle=True, rng=rng, transform=run.transform, part=(rank, processes))
    with _progress(stream, epoch, run.epochs, run.verbose) as bar:
        for step, (x, y) in enumerate(stream, start=1):
            loss, scores = train_step(model, run.optimizer, x, y, distributed, stream.totals[step - 1])
            metrics.add(loss, scores, y)
            if isinstance(run.schedule, OneCycleLR):
                run.schedule.step()
            logs = metrics.result()
            run.hooks.on_batch_end(epoch + 1, step, {"loss": loss, **logs})
            _advance(bar, logs, metrics.count * processes / (time.perf_counter() - started))
            failed = _agree_to_stop(run)
            if model.stop_training:
                break
    stream.close()
    result = metrics.reduce(distributed).result()
    result["images_per_second"] = metrics.count / max(time.perf_counter() - started, 1e-9)
    result["lr"] = float(run.optimizer.lr)   # the record shows the rate each epoch really ran at
    return result, failed


def _reseed_layers(model, seed: int, epoch: int, rank: int = 0) -> None:
    """Give each layer that draws random numbers (dropout) a generator of its own for this epoch
    (and process: the processes' examples differ, so must their masks; one process is rank 0)."""
    for index, layer in enumerate(model.layers):
        if hasattr(layer, "_rng"):
            key = [seed, epoch, index] if rank == 0 else [seed, epoch, index, rank]
            layer._rng = np.random.default_rng(key)


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
