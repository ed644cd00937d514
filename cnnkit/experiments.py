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


@dataclass
class ActivationResult:
    """How fast one activation trained: epochs to the target training accuracy and the final accuracies."""

    activation: str
    epochs_to_target: int | None
    train_accuracy: list[float]
    test_accuracy: float


def compare_activations(epochs: int = 15, target: float = 0.95, lr: float = 0.01, batch_size: int = 32,
                        seed: int = 0, activations=("relu", "tanh", "sigmoid")) -> list[ActivationResult]:
    """Train :func:`activation_net` with each activation by plain SGD (same seed, same data, same steps)."""
    train, test = digits("train"), digits("test")
    results = []
    for name in activations:
        model = activation_net(name, seed)
        history = model.fit(train, epochs=epochs, batch_size=batch_size, optimizer=SGD(lr=lr, momentum=0.9),
                            seed=seed, verbose=0)
        accuracy = history.history["accuracy"]
        reached = next((epoch for epoch, value in enumerate(accuracy, start=1) if value >= target), None)
        results.append(ActivationResult(name, reached, accuracy, model.evaluate(test)["accuracy"]))
    return results


def activation_table(results: list[ActivationResult], target: float = 0.95) -> str:
    """The comparison as a text table."""
    lines = [f"{'activation':<10}  {f'epochs to {target:.0%} train acc':>26}  {'final train acc':>15}  "
             f"{'test acc':>8}"]
    for r in results:
        reached = str(r.epochs_to_target) if r.epochs_to_target is not None else f"not in {len(r.train_accuracy)}"
        lines.append(f"{r.activation:<10}  {reached:>26}  {r.train_accuracy[-1]:>15.3f}  {r.test_accuracy:>8.3f}")
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


def compare_transfer(ks=TRANSFER_KS, scenarios=TRANSFER_SCENARIOS, seeds=(0, 1, 2), pretrain_seed: int = 0,
                     pretrained: Sequential | None = None) -> dict:
    """Learn the digits 5-9 from ``k`` images per class with each scenario, starting from a network
    pretrained on 0-4; test accuracy on the 5-9 test split, averaged over ``seeds`` (each seed draws
    its own k images and initialises the new weights). Returns ``{(scenario, k): mean accuracy}``."""
    pretrained = pretrained if pretrained is not None else pretrained_digits_net(pretrain_seed)
    _, train = digit_halves("train")
    _, test = digit_halves("test")
    results = {}
    for k in ks:
        for name in scenarios:
            scores = [transfer_scenario(name, pretrained, few_shot(train, k, seed), seed).evaluate(test)["accuracy"]
                      for seed in (seeds if k is not None or name != "features top" else seeds[:1])]
            results[(name, k)] = float(np.mean(scores))
    return results


def transfer_table(results: dict) -> str:
    """The experiment as a text table: one row per scenario, one column per k."""
    ks = list(dict.fromkeys(k for _, k in results))
    names = list(dict.fromkeys(name for name, _ in results))
    header = f"{'scenario':<16}" + "".join(f"{'k=' + ('all' if k is None else str(k)):>9}" for k in ks)
    return "\n".join([header] + [f"{name:<16}" + "".join(f"{results[(name, k)]:>9.3f}" for k in ks)
                                 for name in names])
