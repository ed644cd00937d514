"""A training run in a folder: data and model chosen by name, checkpoint, metrics log and report written.

This is what ``cnnkit train`` does; it is a library function so that notebooks and scripts
can do the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path

from .callbacks import CSVLogger, JSONLinesLogger, ModelCheckpoint
from .data import Dataset, ImageFolder, digits, split
from .errors import ConfigError, DataError
from .io import atomic_open
from .checkpoint import load as cnnkit_load
from .model import Sequential
from .models import MODELS
from .optim import SGD, Adam

OPTIMIZERS = ("sgd", "adam")


def load_data(spec: str, image_size: int | None = 64, seed: int = 0, transform=None) -> tuple[Dataset, Dataset]:
    """``"digits"`` (the bundled set), or an image folder: ``PATH/train`` and ``PATH/test`` when present,
    otherwise ``PATH/<class>/*`` split 80/20 per class. Folder images are resized to ``image_size``
    (``None``: kept) and then passed through ``transform``."""
    if spec == "digits":
        return digits("train"), digits("test")
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"--data must be 'digits' or a folder of class sub-folders; {spec!r} is neither")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return (ImageFolder(root / "train", size=image_size, transform=transform),
                ImageFolder(root / "test", size=image_size, transform=transform))
    return split(ImageFolder(root, size=image_size, transform=transform), fraction=0.2, seed=seed)


def build_model(spec: str, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> Sequential:
    """A model by name from :data:`cnnkit.models.MODELS`, or from an architecture JSON file."""
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"--model: no architecture file {spec!r}")
        config = json.loads(path.read_text())
        config["input_shape"] = list(input_shape)
        return Sequential.from_config(config)
    if spec not in MODELS:
        raise ConfigError(f"--model must be one of {sorted(MODELS)} or a .json architecture; received {spec!r}")
    return MODELS[spec](input_shape=input_shape, num_classes=num_classes, seed=seed)


def make_optimizer(name: str, lr: float):
    """``sgd`` (momentum 0.9) or ``adam`` at learning rate ``lr``."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {OPTIMIZERS}; received {name!r}")
    return SGD(lr=lr, momentum=0.9) if name == "sgd" else Adam(lr=lr)


def train_run(data: str = "digits", model: str = "vgg_small", epochs: int = 10, batch_size: int = 32,
              lr: float = 0.05, optimizer: str = "sgd", out: str = "runs/train", seed: int = 0,
              image_size: int = 64, resume: bool = False, verbose: int = 1) -> dict:
    """Train, write ``model.safetensors`` (best by validation loss), ``checkpoint.safetensors``,
    ``metrics.csv``, ``metrics.jsonl`` and ``report.json`` into ``out``, and return the report.

    A tenth of the training data is held out for validation (model selection); the test split
    is used once, on the best model, at the end.
    """
    train, test = load_data(data, image_size, seed)
    fit_on, validation = split(train, fraction=0.1, seed=seed)   # model selection never sees the test set
    image, _ = train[0]
    net = build_model(model, image.shape, len(train.classes), seed)
    net.meta["class_names"] = list(train.classes)
    net.meta["preprocessing"] = "digits" if data == "digits" else "none"   # how cnnkit classify reads photos
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "checkpoint.safetensors"
    if resume and not checkpoint.is_file():
        raise ConfigError(f"--resume: no checkpoint to resume at {checkpoint}")
    callbacks = [ModelCheckpoint(folder / "model.safetensors", monitor="val_loss"),
                 CSVLogger(folder / "metrics.csv", append=resume), JSONLinesLogger(folder / "metrics.jsonl",
                                                                                  append=resume)]
    history = net.fit(fit_on, epochs=epochs, batch_size=batch_size, optimizer=make_optimizer(optimizer, lr),
                      validation=validation, callbacks=callbacks, seed=seed, verbose=verbose,
                      checkpoint=checkpoint, resume=checkpoint if resume else None)
    final = cnnkit_load(folder / "model.safetensors").evaluate(test)
    report = {"data": data, "model": net.name, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "optimizer": optimizer, "seed": seed, "test": final, "history": history.to_dict(),
              "summary": net.summary(format="dict")}
    with atomic_open(folder / "report.json", "w") as handle:
        json.dump(report, handle, indent=2)
    from .viz import report_after_run   # lazily: pictures need the optional matplotlib
    report_after_run(folder, data=test)  # writes report.html when matplotlib is installed
    return report
