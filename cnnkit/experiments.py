"""Experiments that check the lecture's claims on bundled data, instead of assuming them."""

from __future__ import annotations

from dataclasses import dataclass

from .data import digits
from .layers import Conv2d, Dense, Flatten, MaxPool2d, ReLU, Sigmoid, Softmax, Tanh
from .model import Sequential
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
