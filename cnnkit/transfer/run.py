"""What ``cnnkit advise`` and ``cnnkit transfer`` do, as library functions: load a model and data by
name, advise or train a scenario, write ``OUT/model.safetensors`` and ``OUT/report.json``."""

from __future__ import annotations

import json
from pathlib import Path

from ..classify import load_images, load_model  # noqa: F401 (load_images: cnnkit.transfer.run.load_images)
from ..errors import ConfigError
from ..io import atomic_open
from .advisor import advise
from .scenarios import features, finetune, scratch

MODES = ("features", "finetune", "scratch", "auto")


def transfer_run(data: str, weights: str, arch: str | None = None, mode: str = "auto", layer: str | None = None,
                 epochs: int = 10, lr: float = 0.01, out: str = "runs/transfer", seed: int = 0,
                 batch_norm: bool = False, cache_dir="auto", verbose: int = 0, distributed=None,
                 width: float = 1.0) -> dict | None:
    """Train ``mode`` (``auto``: the advisor's choice) and write ``out/model.safetensors`` and ``report.json``.

    ``distributed`` (:class:`cnnkit.distributed.MPI`) trains ``finetune`` and ``scratch`` data-parallel;
    rank 0 alone writes and returns the report, the others return None. ``arch``, ``batch_norm``
    and ``width`` describe the network of ``weights`` (see :func:`cnnkit.classify.load_model`).
    """
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {MODES}; received {mode!r}")
    if distributed is not None and mode not in ("finetune", "scratch"):
        raise ConfigError(f"--mode {mode} does not train data-parallel over several processes; use --mode "
                          f"finetune or scratch with them, or run --mode {mode} as one process")
    source = load_model(weights, arch, batch_norm, width)
    train, test = load_images(data, source, seed)
    advice = None
    if mode == "auto":
        advice = advise(source, train, cache_dir=cache_dir, seed=seed)
        mode, layer = advice.scenario, layer or advice.layer
    if mode == "features":
        model = features(source, train, layer=layer, cache_dir=cache_dir, seed=seed)
    elif mode == "finetune":
        model = finetune(source, train, layer=layer, epochs=epochs, lr=lr, seed=seed, verbose=verbose,
                         distributed=distributed)
    else:
        model = scratch(source, train, epochs=epochs, lr=lr, seed=seed, verbose=verbose, distributed=distributed)
    if distributed is not None and not distributed.is_root:
        return None   # one set of files: rank 0's
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.safetensors")
    report = {"data": data, "model": model.name, "mode": mode, "layer": layer, "epochs": epochs, "lr": lr,
              "seed": seed, "test": model.evaluate(test), "advice": advice.report() if advice else None,
              "summary": model.summary(format="dict")}
    with atomic_open(folder / "report.json", "w") as handle:
        json.dump(report, handle, indent=2)
    from ..viz import report_after_run   # lazily: pictures need the optional matplotlib
    report_after_run(folder, model=model, data=test)
    return report
