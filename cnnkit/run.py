"""A training run in a folder: data and model chosen by name, checkpoint, metrics log and report written.

This is what ``cnnkit train`` does; it is a library function so that notebooks and scripts
can do the same thing.

Images of a folder are scaled to [0, 1] (as torchvision's ``ToTensor``, and as the bundled digits
are), so the default learning rate suits both; the model file records it (preprocessing ``unit``)
and ``cnnkit classify`` prepares photos the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .callbacks import Callback, CSVLogger, JSONLinesLogger, ModelCheckpoint, TerminateOnNaN
from .data import Dataset, split
from .data.sources import TEST_FRACTION, check_not_empty, load_data, scale_to_unit  # noqa: F401 (cnnkit.run.*)
from .errors import ConfigError
from .io import atomic_open, check_writable
from .checkpoint import load as cnnkit_load
from .model import Sequential
from .models import MODELS
from .optim import SGD, Adam

OPTIMIZERS = ("sgd", "adam")
#: the learning rate of a new run: vgg_small reaches about 0.98 on the digits in 15 epochs with it
DEFAULT_LR = 0.02
#: the share of the training data (after the test split) held out for validation
VALIDATION_FRACTION = 0.1


def build_model(spec: str, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> Sequential:
    """A model by name from :data:`cnnkit.models.MODELS`, or from an architecture JSON file."""
    if spec.endswith(".json"):
        config = _architecture_file(Path(spec))
        config["input_shape"] = list(input_shape)
        return Sequential.from_config(config)
    if spec not in MODELS:
        raise ConfigError(f"--model must be one of {sorted(MODELS)} or a .json architecture; received {spec!r}")
    return MODELS[spec](input_shape=input_shape, num_classes=num_classes, seed=seed)


def _architecture_file(path: Path) -> dict:
    """The JSON object of an architecture file (``Sequential.get_config()`` written as JSON)."""
    if not path.is_file():
        raise ConfigError(f"--model: no architecture file {str(path)!r}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"--model {str(path)!r} is not valid JSON ({error}); write the architecture "
                          f"with json.dump(model.get_config(), file)") from None
    if not isinstance(config, dict) or "layers" not in config:
        raise ConfigError(f"--model {str(path)!r} holds a JSON {type(config).__name__}, not an architecture "
                          f"object with 'layers'; write it with json.dump(model.get_config(), file)")
    return config


def make_optimizer(name: str, lr: float):
    """``sgd`` (momentum 0.9) or ``adam`` at learning rate ``lr``."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {OPTIMIZERS}; received {name!r}")
    return SGD(lr=lr, momentum=0.9) if name == "sgd" else Adam(lr=lr)


class _SetLearningRate(Callback):
    """Sets the optimizer's rate once the checkpoint is restored: the rate the user asked for wins
    over the one saved in the checkpoint."""

    def __init__(self, optimizer, lr: float):
        self.optimizer, self.lr = optimizer, lr

    def on_train_begin(self) -> None:
        self.optimizer.lr = self.lr


def prepare_folder(out: str) -> Path:
    """The output folder, created if missing; a ConfigError when it cannot hold the run's files."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {out!r} is a file, not a folder; name a folder for the run's files")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder / "report.json")
    except OSError as error:
        raise ConfigError(f"--out {out!r} cannot be written ({error.strerror or error}); "
                          f"choose a folder you can write to") from None
    return folder


def train_run(data: str = "digits", model: str = "vgg_small", epochs: int = 10, batch_size: int = 32,
              lr: float | None = None, optimizer: str = "sgd", out: str = "runs/train", seed: int = 0,
              image_size: int = 64, resume: bool = False, verbose: int = 1, distributed=None) -> dict | None:
    """Train, write ``model.safetensors`` (best by validation loss), ``checkpoint.safetensors``,
    ``metrics.csv``, ``metrics.jsonl`` and ``report.json`` into ``out``, and return the report.

    With ``distributed`` (:class:`cnnkit.distributed.MPI`) every process trains its share of each
    batch; rank 0 alone writes the files and returns the report, the others return None.

    A tenth of the training data is held out for validation (model selection); the test split
    is used once, on the best model, at the end. ``lr`` defaults to :data:`DEFAULT_LR` for a new
    run; a resumed run continues at the checkpoint's rate unless ``lr`` is given, and then trains
    at ``lr`` from the first resumed epoch (the per-epoch ``lr`` in the record says which).
    """
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1; received {epochs}")
    root = distributed is None or distributed.is_root
    folder = prepare_folder(out) if root else Path(out)   # one set of files: rank 0's
    checkpoint = folder / "checkpoint.safetensors"
    if root and resume and not checkpoint.is_file():
        raise ConfigError(f"--resume: no checkpoint to resume at {checkpoint}")
    train, test = load_data(data, image_size, seed)
    fit_on, validation = split(train, fraction=VALIDATION_FRACTION, seed=seed)   # never the test set
    check_not_empty(validation, data, "validation", VALIDATION_FRACTION, "(the validation split picks the best epoch)")
    image, _ = train[0]
    net = build_model(model, image.shape, len(train.classes), seed)
    net.meta["class_names"] = list(train.classes)
    net.meta["preprocessing"] = "digits" if data == "digits" else "unit"   # how cnnkit classify reads photos
    opt = make_optimizer(optimizer, DEFAULT_LR if lr is None else lr)
    best = ModelCheckpoint(folder / "model.safetensors", monitor="val_loss")
    guard = TerminateOnNaN(announce=False)
    callbacks = [guard, best, CSVLogger(folder / "metrics.csv"), JSONLinesLogger(folder / "metrics.jsonl")]
    if resume and lr is not None:
        callbacks.append(_SetLearningRate(opt, lr))
    history = net.fit(fit_on, epochs=epochs, batch_size=batch_size, optimizer=opt, validation=validation,
                      callbacks=callbacks, seed=seed, verbose=verbose, checkpoint=checkpoint,
                      resume=checkpoint if resume else None, distributed=distributed)
    if not root:
        return None
    if guard.failed:
        raise ConfigError(_divergence_message(guard, opt.lr, fit_on, folder, best.saved_epoch))
    final = cnnkit_load(folder / "model.safetensors").evaluate(test)
    report = {"data": data, "model": net.name, "epochs": epochs, "batch_size": batch_size, "lr": opt.lr,
              "optimizer": optimizer, "seed": seed, "preprocessing": net.meta["preprocessing"],
              "best_epoch": best.saved_epoch, "test": final, "history": history.to_dict(),
              "summary": net.summary(format="dict")}
    with atomic_open(folder / "report.json", "w") as handle:
        json.dump(report, handle, indent=2)
    from .viz import report_after_run   # lazily: pictures need the optional matplotlib
    report_after_run(folder, data=test)  # writes report.html when matplotlib is installed
    return report


def _divergence_message(guard: TerminateOnNaN, lr: float, data: Dataset, folder: Path,
                        best_epoch: int | None) -> str:
    """What happened, the likely cause and what to try, for a run whose loss stopped being finite."""
    epoch, step = guard.bad_step
    low, high = _pixel_range(data)
    if high > 2.0:
        cause = (f"the inputs range over {low:g}..{high:g}, not [0, 1]: scale them (divide 0-255 pixels "
                 f"by 255) or lower --lr")
    else:
        cause = f"the inputs range over {low:g}..{high:g}, so the learning rate is the likely cause: lower --lr"
    kept = (f"the best epoch so far ({best_epoch}) is in {folder / 'model.safetensors'} and the last good "
            f"one in {folder / 'checkpoint.safetensors'}; continue with --resume --lr {lr / 10:g}"
            if best_epoch is not None else "no epoch finished, so no model was saved")
    return (f"training diverged: the loss became {guard.bad_loss} at epoch {epoch}, step {step} with "
            f"lr {lr:g}; {cause} (e.g. --lr {lr / 10:g}); {kept}")


def _pixel_range(data: Dataset, count: int = 64) -> tuple[float, float]:
    """The smallest and largest input value over the first ``count`` training images."""
    images = [data[i][0] for i in range(min(count, len(data)))]
    return float(min(np.min(x) for x in images)), float(max(np.max(x) for x in images))
