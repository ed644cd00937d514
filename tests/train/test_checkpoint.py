"""Model files and crash safety of checkpoint writes."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import cnnkit
from cnnkit.errors import WeightsError


def test_save_load_gives_identical_predictions(tmp_path):
    model = cnnkit.models.vgg_small(batch_norm=True)
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    model.fit((x, np.arange(6) % 10), epochs=1, batch_size=3, verbose=0)   # moves the running statistics
    model.meta["class_names"] = list("abcdefghij")
    model.save(tmp_path / "m.safetensors")
    loaded = cnnkit.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.meta["class_names"] == list("abcdefghij")
    assert loaded.get_config() == model.get_config()


def test_load_refuses_files_that_are_not_cnnkit_models(tmp_path):
    path = tmp_path / "plain.safetensors"
    cnnkit.io.write_safetensors(path, {"w": np.zeros(3, np.float32)})
    with pytest.raises(WeightsError, match="not a cnnkit model file"):
        cnnkit.load(path)


WRITER = textwrap.dedent("""
    import sys, numpy as np, cnnkit
    from cnnkit.layers import Dense, Flatten
    model = cnnkit.Sequential([Flatten(), Dense(4000)], input_shape=(50, 50, 4), seed=1)
    print("ready", flush=True)
    while True:                       # rewrite the checkpoint until killed
        model.save(sys.argv[1])
""")


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "model.safetensors"
    original = cnnkit.Sequential([cnnkit.layers.Flatten(), cnnkit.layers.Dense(4000)], input_shape=(50, 50, 4),
                                 seed=0)
    original.save(path)
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    assert process.stdout.readline().strip() == b"ready"
    time.sleep(1.5)                   # several 160 MB writes are under way
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    loaded = cnnkit.load(path)        # the old file or a complete new one, never half of one
    assert loaded.state_dict()["dense_1.weight"].shape == (10000, 4000)
    # a killed writer may leave its hidden temporary file behind, never a visible partial file
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.safetensors"]
    assert all(name.startswith(".tmp") or name.endswith(".tmp") for name in leftovers), leftovers


def test_saving_creates_the_checkpoint_folder(tmp_path):
    model = cnnkit.models.vgg_small(widths=(2,), dense=4)
    model.save(tmp_path / "new" / "deeper" / "m.safetensors")
    assert cnnkit.load(tmp_path / "new" / "deeper" / "m.safetensors").layer_names() == model.layer_names()
