"""Softmax regression with an L2 penalty on fixed features: the lecture's "linear classifier on
CNN features".

Minimises ``mean cross-entropy(softmax(z W + b), y) + l2/2 * ||W||^2`` over ``z``, the features
standardised per dimension with the training set's mean and standard deviation (so one ``l2``
suits features of any scale), by Adam on mini-batches. The standardisation is folded back into
the weights at the end, so the result is one plain ``Dense`` layer on the raw features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError
from ..ops.loss import softmax_cross_entropy
from ..optim import Adam
from ..parameter import Parameter


@dataclass
class LinearClassifier:
    """``scores = features @ weight + bias``; ``weight`` (D, K), ``bias`` (K,), on raw features."""

    weight: np.ndarray
    bias: np.ndarray

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Class scores ``(N, K)`` of features ``(N, D)``."""
        return np.asarray(features, np.float32) @ self.weight + self.bias

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of ``features`` whose highest score is the label."""
        return float(np.mean(self.scores(features).argmax(axis=1) == np.asarray(labels)))


def fit_linear(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float = 1e-3, steps: int = 300,
               batch_size: int = 256, lr: float = 0.01, seed: int = 0) -> LinearClassifier:
    """Train softmax regression with L2 on ``features`` ``(N, D)`` (a memory map is fine) and ``labels``.

    Args:
        l2: weight of the penalty ``l2/2 * ||W||^2`` on standardised features (the bias is not penalised).
        steps: Adam updates; each draws ``batch_size`` rows (all rows when there are fewer).
        lr: Adam's learning rate.
        seed: the order of the mini-batches.
    """
    labels = np.asarray(labels, np.int64)
    _check(features, labels, num_classes, l2, steps)
    mean, scale = _moments(features)
    weight = Parameter(np.zeros((features.shape[1], num_classes), np.float32))
    bias = Parameter(np.zeros(num_classes, np.float32))
    optimizer = Adam(lr=lr, params={"weight": weight, "bias": bias})
    rng = np.random.default_rng(seed)
    full = len(labels) <= batch_size
    z_all = (np.asarray(features, np.float32) - mean) / scale if full else None
    order, cursor = rng.permutation(len(labels)), 0
    for _ in range(steps):
        if full:
            z, y = z_all, labels
        else:
            if cursor + batch_size > len(order):
                order, cursor = rng.permutation(len(labels)), 0
            rows = np.sort(order[cursor:cursor + batch_size])
            cursor += batch_size
            z, y = (np.asarray(features[rows], np.float32) - mean) / scale, labels[rows]
        _, dscores = softmax_cross_entropy(z @ weight.value + bias.value, y)
        weight.zero_grad()
        bias.zero_grad()
        weight.accumulate(z.T @ dscores + l2 * weight.value)
        bias.accumulate(dscores.sum(axis=0))
        optimizer.step()
    folded = weight.value / scale[:, None]
    return LinearClassifier(folded.astype(np.float32), (bias.value - mean @ folded).astype(np.float32))


def _moments(features: np.ndarray, rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (constant dimensions get scale 1), in chunks."""
    total = np.zeros(features.shape[1], np.float64)
    squares = np.zeros(features.shape[1], np.float64)
    for start in range(0, len(features), rows):
        chunk = np.asarray(features[start:start + rows], np.float64)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
    mean = total / len(features)
    std = np.sqrt(np.maximum(squares / len(features) - mean * mean, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def _check(features, labels, num_classes, l2, steps) -> None:
    if getattr(features, "ndim", 0) != 2 or len(features) != len(labels):
        raise DataError(f"fit_linear: features must be (N, D) with one row per label ({len(labels)}); "
                        f"received shape {getattr(features, 'shape', None)}")
    if len(labels) == 0:
        raise DataError("fit_linear: no examples to train on")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"fit_linear: labels must lie in [0, {num_classes}); received labels from "
                        f"{labels.min()} to {labels.max()}")
    if not isinstance(l2, (int, float)) or l2 < 0:
        raise ConfigError(f"fit_linear: l2 must be a number >= 0; received l2={l2!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"fit_linear: steps must be an int >= 1; received steps={steps!r}")
