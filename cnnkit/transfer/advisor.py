"""The lecture's rule of thumb, measured: how much data, and how similar to what the network learned.

Similarity is measured by **linear probes**: a softmax classifier with L2 (:func:`fit_linear`) is
trained on the features at each block output (:func:`feature_layers`) and on the raw pixels
(``"input"``, a baseline that owes nothing to pretraining), and scored by stratified k-fold
cross-validation on the user's own images, so every image is held out once. Volumes are
average-pooled to at most ``pool_to`` numbers first (see :func:`pool_features`).

The reading (Yosinski et al. 2014; Azizpour et al. 2015): features specialise with depth. When the
new data resembles the original, the top features are (nearly) the best of all depths; when it
does not, an earlier layer, or the raw pixels, probes better. So

    similarity = (acc_top - chance) / (acc_best - chance)

is 1 when the top layer is the best probe and falls as earlier layers win; the data counts as
*similar* when ``similarity >= similar_above``. The data is *large* when the median number of
images per class reaches ``large_per_class``. Then, as the lecture's table says:

- small & similar   -> ``features`` at the top layer;
- small & different -> ``features`` at the best-probing layer (an earlier one);
- large & similar   -> ``finetune``, freezing up to the block below the top;
- large & different -> ``finetune`` from the best-probing layer up, or ``scratch`` when no layer
  of the network beats the raw pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import labels_of, subset
from ..errors import DataError
from ..train import as_dataset
from .cache import extract, pool_features
from .linear import fit_linear
from .nodes import feature_layers

INPUT = "input"


@dataclass
class Advice:
    """A recommended scenario and cut point, with the numbers that led to it."""

    scenario: str
    layer: str | None
    num_classes: int
    images_per_class: float
    size: str
    similarity: float
    similar: bool
    probes: dict[str, float]
    chance: float
    best_layer: str
    thresholds: dict = field(default_factory=dict)

    def report(self) -> str:
        """The advice as text: the measurements, then the recommendation."""
        lines = [f"classes: {self.num_classes}, images per class (median): {self.images_per_class:g} -> "
                 f"{self.size} (large from {self.thresholds['large_per_class']} per class)",
                 f"linear-probe accuracy, cross-validated (chance {self.chance:.3f}):"]
        lines += [f"  {name:<16} {value:.3f}" + ("  <- best" if name == self.best_layer else "")
                  for name, value in self.probes.items()]
        lines.append(f"similarity (top vs best, chance-corrected): {self.similarity:.3f} -> "
                     f"{'similar' if self.similar else 'different'} (similar from {self.thresholds['similar_above']})")
        cut = f" at layer {self.layer}" if self.layer else ""
        lines.append(f"recommendation: {self.scenario}{cut}")
        return "\n".join(lines)


def advise(model, data, large_per_class: int = 1000, similar_above: float = 0.9, folds: int = 5,
           max_images: int = 2000, pool_to: int = 4096, l2: float = 1e-3, steps: int = 200,
           cache_dir=None, batch_size: int = 64, seed: int = 0) -> Advice:
    """Measure ``data`` against ``model`` and recommend a scenario (see the module doc for the method).

    Args:
        large_per_class: median images per class from which the data set counts as large.
        similar_above: similarity (chance-corrected top/best probe accuracy) from which the data
            counts as similar to the pretraining data.
        folds: cross-validation folds (fewer when a class has fewer images).
        max_images: probes use a stratified sample of at most this many images.
        pool_to, l2, steps: feature pooling and the probe classifier's settings.
        cache_dir: feature cache (``None``: in memory; ``"auto"``: the user cache).
    """
    data = as_dataset(data, "data")
    labels = labels_of(data)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        raise DataError(f"advise: needs at least 2 classes with at least 2 images each; received "
                        f"{len(classes)} classes, the smallest with {counts.min() if len(counts) else 0} images")
    sample = _stratified_sample(labels, max_images, seed)
    probe_data = subset(data, sample) if len(sample) < len(labels) else data
    y = np.searchsorted(classes, labels[sample])
    layers = feature_layers(model)
    table = extract(model, probe_data, layers, cache_dir=cache_dir, batch_size=batch_size, pool_to=pool_to)
    pixels = pool_features(np.stack([probe_data[i][0] for i in range(len(y))]), pool_to)
    probes = {INPUT: _cross_validate(pixels, y, len(classes), folds, l2, steps, seed)}
    probes.update({name: _cross_validate(np.asarray(table[name]), y, len(classes), folds, l2, steps, seed)
                   for name in layers})
    return _decide(layers, probes, len(classes), float(np.median(counts)), large_per_class, similar_above)


def _decide(layers, probes, num_classes, per_class, large_per_class, similar_above) -> Advice:
    chance = 1.0 / num_classes
    best = max(probes, key=lambda name: (probes[name], list(probes).index(name)))
    top = layers[-1]
    similarity = (probes[top] - chance) / max(probes[best] - chance, 1e-9)
    similar = similarity >= similar_above
    large = per_class >= large_per_class
    if not large:
        scenario, layer = "features", top if similar else (best if best != INPUT else layers[0])
    elif similar:
        scenario, layer = "finetune", layers[-2] if len(layers) > 1 else None
    elif best == INPUT:
        scenario, layer = "scratch", None
    else:
        position = layers.index(best)
        scenario, layer = "finetune", layers[position - 1] if position > 0 else None
    return Advice(scenario, layer, num_classes, per_class, "large" if large else "small", float(similarity),
                  bool(similar), probes, chance, best,
                  {"large_per_class": large_per_class, "similar_above": similar_above})


def _stratified_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == c), max(2, round(limit * np.mean(labels == c))), replace=False)
            for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def _cross_validate(features, y, num_classes, folds, l2, steps, seed) -> float:
    """Mean held-out accuracy over stratified folds: fold ``f`` holds out every ``folds``-th image of each class."""
    rng = np.random.default_rng(seed)
    folds = int(min(folds, np.bincount(y).min()))
    fold_of = np.empty(len(y), np.int64)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold_of[members] = np.arange(len(members)) % folds
    correct = 0
    for fold in range(folds):
        train, held = fold_of != fold, fold_of == fold
        classifier = fit_linear(features[train], y[train], num_classes, l2=l2, steps=steps, seed=seed)
        correct += int(np.sum(classifier.scores(features[held]).argmax(axis=1) == y[held]))
    return correct / len(y)
