"""The lecture's three training scenarios over any cnnkit model, pretrained or not: a
``Sequential`` or a graph (:class:`~cnnkit.model.Model` with one input and one output).

- :func:`scratch`: the same architecture, re-initialised, trained end to end.
- :func:`features`: the network up to a named node as a fixed feature extractor, and a linear
  softmax classifier with L2 trained on its (cached) outputs.
- :func:`finetune`: a new classifier, the named node and every node it depends on frozen, the rest
  trained with a lower learning rate than the classifier; optionally the classifier alone first.

Each returns a new, trained model of the source's kind (``Sequential`` or ``Model``; see
:mod:`cnnkit.transfer.surgery`) that ends in a softmax and carries
``meta["class_names"]`` (and ``meta["transfer"]``, how it was made), so ``model.save(path)``
writes a file that ``cnnkit.load`` and ``cnnkit classify`` accept. The source model is untouched.
"""

from __future__ import annotations

import os

from ..data import Dataset, labels_of
from ..errors import ConfigError
from ..layers import BatchNorm2d
from ..model import Model
from ..optim import SGD
from ..train import as_dataset
from .cache import Extractor, extract
from .linear import fit_linear
from .nodes import classifier, cut_step, feature_layers
from .surgery import reinitialised, with_new_head


def _classes(data: Dataset) -> list[str]:
    names = list(getattr(data, "classes", []) or [])
    if not names:
        names = [str(i) for i in range(int(labels_of(data).max()) + 1)]
    if len(names) < 2:
        raise ConfigError(f"transfer: the training data has {len(names)} class; classification needs at least 2")
    return names


def _optimizer(lr: float, momentum: float, weight_decay: float, groups=None) -> SGD:
    return SGD(lr=lr, momentum=momentum, weight_decay=weight_decay, groups=groups)


def scratch(model: Model, train, epochs: int = 10, batch_size: int = 32, lr: float = 0.05,
            momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0, validation=None,
            verbose: int = 0, distributed=None) -> Model:
    """Train ``model``'s architecture from a fresh initialisation (seeded by ``seed``) on ``train``.

    The classifier gets one unit per class of ``train``; every weight learns at ``lr`` (SGD with
    momentum and optional L2 ``weight_decay``). ``distributed``: as in :func:`cnnkit.train.fit`.
    """
    data = as_dataset(train, "train")
    names = _classes(data)
    net = reinitialised(model, len(names), seed=seed, class_names=names)
    net.fit(data, epochs=epochs, batch_size=batch_size, optimizer=_optimizer(lr, momentum, weight_decay),
            validation=validation, seed=seed, verbose=verbose, distributed=distributed)
    net.meta["transfer"] = {"scenario": "scratch", "layer": None, "source": model.name}
    return net


def features(model: Model, train, layer: str | None = None, l2: float = 1e-3, steps: int = 300,
             lr: float = 0.01, cache_dir: str | os.PathLike | None = "auto", batch_size: int = 64, seed: int = 0,
             extractor: Extractor | None = None) -> Model:
    """A linear softmax classifier with L2 on the features of ``model`` at the node ``layer``.

    The features of ``train`` are computed once and cached on disk (see :mod:`cnnkit.transfer.cache`),
    so trying another ``l2`` reuses them. The result is one model: the network up to ``layer``
    (a volume is flattened), ``Dense(num_classes, name="head")`` and a softmax
    (:func:`~cnnkit.transfer.with_new_head` with ``at=layer``).

    Args:
        layer: where to cut (``fc7``, ``relu7``, ``pool5``, ``conv4_3`` ...; any node of a graph that
            does not depend on the classifier); default the deepest of
            :func:`~cnnkit.transfer.feature_layers` (``relu7`` in VGG16).
        l2, steps, lr: the classifier's penalty, Adam steps and learning rate (:func:`fit_linear`).
        cache_dir: ``"auto"`` (``~/.cache/cnnkit/features``), a folder, or ``None`` for no disk cache.
        extractor: replaces the network pass (see :func:`~cnnkit.transfer.extract`).
    """
    data = as_dataset(train, "train")
    names = _classes(data)
    layer = layer if layer is not None else feature_layers(model)[-1]
    cut_step(model, layer)
    table = extract(model, data, layer, cache_dir=cache_dir, batch_size=batch_size, extractor=extractor)[layer]
    linear = fit_linear(table, labels_of(data), len(names), l2=l2, steps=steps, lr=lr, seed=seed)
    net = with_new_head(model, len(names), seed=seed, class_names=names, at=layer)
    head = classifier(net).layer.parameters()
    head["weight"].value = linear.weight
    head["bias"].value = linear.bias
    net.meta["transfer"] = {"scenario": "features", "layer": layer, "source": model.name, "l2": l2}
    return net


def finetune(model: Model, train, layer: str | None = None, epochs: int = 10, head_epochs: int = 0,
             batch_size: int = 32, lr: float = 0.01, body_lr_ratio: float = 0.1, momentum: float = 0.9,
             weight_decay: float = 0.0, seed: int = 0, validation=None, verbose: int = 0,
             distributed=None) -> Model:
    """Replace the classifier, freeze the node ``layer`` and every node it depends on, train the rest.

    The new classifier learns at ``lr``, the unfrozen layers below it at ``lr * body_lr_ratio``
    (optimizer parameter groups; the ratio holds under any schedule). Frozen layers run in
    inference mode during training (no caches, no back-propagation; their batch norm uses and
    keeps its running statistics, and is marked ``frozen_stats``), so their parameters and
    buffers stay bit-for-bit unchanged.

    Args:
        layer: the last frozen node: it and its ancestors are frozen (in a ``Sequential``, every
            layer up to it; in a graph, every layer on a path from the input to it, while a
            parallel branch that joins later learns); ``None`` freezes nothing (the whole body
            learns, slower).
        head_epochs: when > 0, first train the new classifier alone for this many epochs (every
            other layer frozen), then unfreeze down to ``layer`` and train ``epochs`` more, as
            Keras' and fastai's two-phase fine-tuning does.
        distributed: data-parallel training over MPI, as in :func:`cnnkit.train.fit`.
    """
    data = as_dataset(train, "train")
    if not isinstance(body_lr_ratio, (int, float)) or not 0 <= body_lr_ratio <= 1:
        raise ConfigError(f"finetune: body_lr_ratio must be a number in [0, 1]; received {body_lr_ratio!r}")
    names = _classes(data)
    net = with_new_head(model, len(names), seed=seed, class_names=names)
    cut_step(net, layer)
    head = classifier(net).layer.name
    frozen = {id(block) for block in net.ancestors(layer)} if layer is not None else set()
    for block in net.layers:
        if isinstance(block, BatchNorm2d):   # the source's own flags are replaced by this cut
            block.frozen_stats = id(block) in frozen
    options = dict(batch_size=batch_size, validation=validation, seed=seed, verbose=verbose, distributed=distributed)
    if head_epochs > 0:
        net.freeze()
        net.unfreeze(head)
        net.fit(data, epochs=head_epochs, optimizer=_optimizer(lr, momentum, weight_decay), **options)
    net.unfreeze()
    if layer is not None:
        net.freeze(up_to=layer)
    body = [name for name in net.parameters() if not name.startswith(head + ".")]
    groups = [{"params": body, "lr": lr * body_lr_ratio}] if body else None
    net.fit(data, epochs=epochs, optimizer=_optimizer(lr, momentum, weight_decay, groups), **options)
    net.meta["transfer"] = {"scenario": "finetune", "layer": layer, "source": model.name,
                            "head_epochs": head_epochs, "body_lr_ratio": body_lr_ratio}
    return net
