"""Training steps reuse the memory the step before freed (glibc only): no fresh pages per step."""

import json
import os
import platform
import subprocess
import sys

import pytest

# Training steps whose convolution output (50 MB) is above glibc's largest mmap threshold
# (32 MiB); prints the page faults per step after two warm-up steps, and whether malloc kept
# freed memory while the steps ran. "bare": steps on one batch, as the benchmark runs them;
# "block": a new batch each step (freed between steps), inside ``cnnkit.runtime()`` as in fit.
STEPS = """
import contextlib, json, resource, sys, numpy as np, cnnkit
from cnnkit.layers import Conv2d, Dense, Flatten, MaxPool2d, ReLU
from cnnkit.ops.runtime import settings
from cnnkit.optim import SGD
from cnnkit.train import train_step
block = sys.argv[1] == "block"
model = cnnkit.Sequential([Conv2d(96, 3, padding=1), ReLU(), MaxPool2d(4), Flatten(), Dense(10)],
                          input_shape=(128, 128, 3))
x = np.random.default_rng(0).standard_normal((8, 128, 128, 3), dtype=np.float32)
y = np.arange(8) % 10
kept = []
class Recording(SGD):
    def step(self):
        kept.append(settings().keeping_memory)
        super().step()
optimizer = Recording(lr=0.01, params=model.parameters())
with cnnkit.runtime() if block else contextlib.nullcontext():
    for _ in range(2):
        train_step(model, optimizer, x.copy() if block else x, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        train_step(model, optimizer, x.copy() if block else x, y)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"faults": faults, "kept": all(kept), "after": settings().keeping_memory}))
"""


def _faults_per_step(reuse: str, mode: str) -> dict:
    env = {**os.environ, "CNNKIT_REUSE_MEMORY": reuse, "CNNKIT_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", STEPS, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc's controls are glibc's")
def test_training_steps_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    fresh, bare, block = _faults_per_step("0", "bare"), _faults_per_step("1", "bare"), _faults_per_step("1", "block")
    assert not fresh["kept"] and bare["kept"] and block["kept"]
    assert not (fresh["after"] or bare["after"] or block["after"])   # malloc put back after the steps
    assert fresh["faults"] > 500   # new pages for each 50 MB volume (fewer when some are huge pages)
    assert bare["faults"] < fresh["faults"] / 5
    assert block["faults"] < fresh["faults"] / 5


def test_releasing_freed_memory_leaves_live_arrays_intact():
    import numpy as np
    import cnnkit
    from cnnkit.ops.allocator import release_freed_memory
    with cnnkit.runtime(reuse_memory=True):
        live = np.arange(10_000_000, dtype=np.float64)
        del_me = np.ones(10_000_000)
        del del_me
        release_freed_memory()
    assert live[-1] == 9_999_999 and live.sum() == 9_999_999 * 10_000_000 / 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc's controls are glibc's")
def test_fit_gives_the_kept_memory_back_even_when_training_stops_on_an_error(monkeypatch):
    import numpy as np
    import cnnkit
    from cnnkit import train
    from cnnkit.callbacks import Callback
    from cnnkit.layers import Dense, Flatten
    from cnnkit.ops import allocator

    class Interrupt(Callback):
        def on_batch_end(self, epoch, step, logs):
            raise KeyboardInterrupt

    released = []
    monkeypatch.delenv("CNNKIT_REUSE_MEMORY", raising=False)
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: released.append(True))
    model = cnnkit.Sequential([Flatten(), Dense(2)], input_shape=(2, 2, 1))
    data = (np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1]))
    with pytest.raises(KeyboardInterrupt):
        train.fit(model, data, epochs=1, batch_size=2, verbose=0, callbacks=[Interrupt()])
    assert released == [True]
    train.fit(model, data, epochs=1, batch_size=2, verbose=0)
    assert released == [True, True]
