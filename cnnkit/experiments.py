"""Experiments that check the lecture's claims on bundled data, instead of assuming them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import transfer
from .data import ArrayDataset, digits, subset
from .layers import Conv2d, Dense, Flatten, MaxPool2d, ReLU, Sigmoid, Softmax, Tanh
from .model import Sequential
from .models import vgg_small
from .optim import SGD

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


def activation_net(activation: str, seed: int = 0) -> Sequential:
    """The same small CNN for the digits with a chosen activation after every hidden layer."""
    act = ACTIVATIONS[activation]
    return Sequential([Conv2d(16, 3, padding=1), act(), Conv2d(16, 3, padding=1), act(), MaxPool2d(2),
                       Conv2d(32, 3, padding=1), act(), MaxPool2d(2), Flatten(), Dense(64), act(),
                       Dense(10), Softmax()], input_shape=(8, 8, 1), seed=seed, name=f"digits_{activation}")


@dataclass(frozen=True)
class Spread:
    """One measurement repeated over seeds: its values, mean, standard deviation and range.

    A claim about an experiment is a mean with its spread: training numbers move in the last bits
    with the CPU and the thread count, and a small network's accuracy moves by points with them.
    """

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        """The mean over the runs."""
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for a single value)."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    @property
    def low(self) -> float:
        """The smallest value of the runs."""
        return float(min(self.values))

    @property
    def high(self) -> float:
        """The largest value of the runs."""
        return float(max(self.values))

    def __sub__(self, other: "Spread") -> "Spread":
        """Run-by-run differences of two measurements taken over the same seeds, in the same order."""
        if len(self.values) != len(other.values):
            raise ValueError(f"cannot pair {len(self.values)} runs with {len(other.values)}")
        return Spread(tuple(a - b for a, b in zip(self.values, other.values)))

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}"


DEFAULT_SEEDS = (0, 1, 2, 3, 4)


@dataclass
class ActivationResult:
    """How fast one activation trained in ``epochs`` epochs, once per seed: epochs to the target
    training accuracy (``None`` where it was not reached), and the final training and test accuracies."""

    activation: str
    epochs: int
    epochs_to_target: list[int | None]
    final_train_accuracy: Spread
    test_accuracy: Spread

    @property
    def reached(self) -> list[int]:
        """The epochs to target of the seeds that reached it."""
        return [e for e in self.epochs_to_target if e is not None]


def compare_activations(epochs: int = 15, target: float = 0.95, lr: float = 0.01, batch_size: int = 32,
                        seeds=DEFAULT_SEEDS, activations=("relu", "tanh", "sigmoid")) -> list[ActivationResult]:
    """Train :func:`activation_net` with each activation by plain SGD, once per seed (the seed sets
    the initial weights and the order of the batches; every activation gets the same seeds)."""
    train, test = digits("train"), digits("test")
    results = []
    for name in activations:
        reached, final, tested = [], [], []
        for seed in seeds:
            model = activation_net(name, seed)
            history = model.fit(train, epochs=epochs, batch_size=batch_size, optimizer=SGD(lr=lr, momentum=0.9),
                                seed=seed, verbose=0)
            accuracy = history.history["accuracy"]
            reached.append(next((epoch for epoch, value in enumerate(accuracy, start=1) if value >= target), None))
            final.append(accuracy[-1])
            tested.append(model.evaluate(test)["accuracy"])
        results.append(ActivationResult(name, epochs, reached, Spread(tuple(final)), Spread(tuple(tested))))
    return results


def activation_table(results: list[ActivationResult], target: float = 0.95) -> str:
    """The comparison as a text table: epochs to target (mean and range over the seeds that reached
    it, and how many did), final training and test accuracy (mean ± standard deviation)."""
    lines = [f"{'activation':<10}  {f'epochs to {target:.0%} train acc':>26}  {'seeds reaching it':>17}  "
             f"{'final train acc':>15}  {'test acc':>13}"]
    for r in results:
        runs = len(r.epochs_to_target)
        epochs = (f"{np.mean(r.reached):.1f} ({min(r.reached)}-{max(r.reached)})" if r.reached
                  else f"not in {r.epochs}")
        lines.append(f"{r.activation:<10}  {epochs:>26}  {f'{len(r.reached)} of {runs}':>17}  "
                     f"{str(r.final_train_accuracy):>15}  {str(r.test_accuracy):>13}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- transfer learning
TRANSFER_KS = (1, 5, 10, 25, None)      # None: every training image of 5-9
TRANSFER_SCENARIOS = ("scratch", "features top", "features pool1", "finetune")


def digit_halves(split: str):
    """The digits split into ``(0-4, 5-9)``, each relabelled 0..4 with the digits as class names."""
    data = digits(split)
    halves = []
    for low in (0, 5):
        keep = (data.y >= low) & (data.y < low + 5)
        halves.append(ArrayDataset(data.x[keep], data.y[keep] - low, classes=[str(d) for d in range(low, low + 5)]))
    return tuple(halves)


def pretrained_digits_net(seed: int = 0, epochs: int = 4) -> Sequential:
    """``vgg_small`` (batch norm) trained on the digits 0-4: the "pretrained" network of the experiment."""
    source, _ = digit_halves("train")
    net = vgg_small(num_classes=5, batch_norm=True, seed=seed)
    net.meta["class_names"] = list(source.classes)
    net.fit(source, epochs=epochs, batch_size=32, optimizer=SGD(lr=0.05, momentum=0.9), seed=seed, verbose=0)
    return net


def few_shot(data, k: int | None, seed: int):
    """``k`` images per class of ``data`` drawn with ``seed`` (all of them for ``k=None``)."""
    if k is None:
        return data
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(data.y == c), k, replace=False) for c in range(len(data.classes))]
    return subset(data, np.concatenate(picks))


def transfer_scenario(name: str, pretrained: Sequential, data, seed: int, steps: int = 60) -> Sequential:
    """Train one scenario of the experiment on ``data`` with a budget of about ``steps`` SGD steps."""
    epochs = max(3, -(-steps // -(-len(data) // 32)))
    if name == "scratch":
        return transfer.scratch(pretrained, data, epochs=epochs, lr=0.05, seed=seed)
    if name.startswith("features"):
        layer = "pool1" if name.endswith("pool1") else None
        return transfer.features(pretrained, data, layer=layer, cache_dir=None, seed=seed)
    return transfer.finetune(pretrained, data, layer="pool1", epochs=epochs, lr=0.05, body_lr_ratio=0.5, seed=seed)


TRANSFER_DRAWS = (0, 1, 2, 3, 4, 5)


def compare_transfer(ks=TRANSFER_KS, scenarios=TRANSFER_SCENARIOS, draws=TRANSFER_DRAWS,
                     pretrain_seeds=DEFAULT_SEEDS, pretrained: Sequential | None = None) -> dict:
    """Learn the digits 5-9 from ``k`` images per class with each scenario, starting from a network
    pretrained on 0-4, and measure test accuracy on the 5-9 test split.

    Every scenario runs once for each pretraining seed and each draw (a draw picks its own k images
    and initialises the new weights), so each cell is a :class:`Spread` over
    ``len(pretrain_seeds) * len(draws)`` runs, in the same order in every cell: ``a - b`` pairs
    the runs. ``pretrained`` replaces the pretraining (one network instead of ``pretrain_seeds``).
    Returns ``{(scenario, k): Spread}``.
    """
    _, train = digit_halves("train")
    _, test = digit_halves("test")
    scores = {(name, k): [] for k in ks for name in scenarios}
    for network in [pretrained] if pretrained is not None else map(pretrained_digits_net, pretrain_seeds):
        for (name, k), values in scores.items():
            values.extend(transfer_scenario(name, network, few_shot(train, k, draw), draw).evaluate(test)["accuracy"]
                          for draw in draws)
    return {cell: Spread(tuple(values)) for cell, values in scores.items()}


def transfer_table(results: dict) -> str:
    """The experiment as a text table: one row per scenario, one column per k, each cell the mean
    test accuracy ± its standard deviation over the runs."""
    ks = list(dict.fromkeys(k for _, k in results))
    names = list(dict.fromkeys(name for name, _ in results))
    header = f"{'scenario':<16}" + "".join(f"{'k=' + ('all' if k is None else str(k)):>15}" for k in ks)
    return "\n".join([header] + [f"{name:<16}" + "".join(f"{str(results[(name, k)]):>15}" for k in ks)
                                 for name in names])
