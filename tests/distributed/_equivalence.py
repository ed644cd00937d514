"""Trains a small CNN with batch norm for 20 SGD steps and writes its weights (run by the tests).

``python _equivalence.py OUT``: one process, no MPI (the reference);
``mpiexec -n 2 python _equivalence.py OUT``: two processes, each with half of every batch of 32.
``--no-sync-batch-norm``: each process normalises with its own half; ``--steps=0``: no training;
``--epochs=N`` (20 steps each), ``--checkpoint=PATH`` and ``--resume=PATH`` as in ``fit``.
"""

import sys

import numpy as np

import cnnkit
from cnnkit.distributed import MPI
from cnnkit.launch import launched_processes
from cnnkit.layers import BatchNorm2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU
from cnnkit.optim import SGD

BATCH, STEPS = 32, 20


def net():
    # no bias before batch norm: its gradient is zero, and its value rounding noise
    return cnnkit.Sequential([Conv2d(6, 3, padding=1, use_bias=False), BatchNorm2d(), ReLU(), MaxPool2d(2),
                              Conv2d(8, 3, padding=1, use_bias=False), BatchNorm2d(), ReLU(), Flatten(), Dense(10)],
                             input_shape=(8, 8, 1), seed=3)


def main(out: str, options: list[str]) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((BATCH * STEPS, 8, 8, 1)) + 1).astype(np.float32)   # mean 1: running means far from 0
    y = rng.integers(0, 10, BATCH * STEPS)
    distributed = None
    if launched_processes() > 1:
        distributed = MPI(sync_batch_norm="--no-sync-batch-norm" not in options)
    model = net()
    epochs = 0 if "--steps=0" in options else int(_option(options, "--epochs", 1))
    model.fit((x, y), epochs=epochs, batch_size=BATCH, optimizer=SGD(lr=0.1, momentum=0.9), seed=5, verbose=0,
              distributed=distributed, checkpoint=_option(options, "--checkpoint"),
              resume=_option(options, "--resume"))
    if distributed is None or distributed.is_root:
        np.savez(out, **model.state_dict())


def _option(options: list[str], name: str, default=None):
    return next((o.split("=", 1)[1] for o in options if o.startswith(name + "=")), default)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
