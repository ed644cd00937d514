"""The summary's memory estimate against the peak a forward pass really allocates."""

import tracemalloc

import numpy as np
import pytest

import cnnkit


@pytest.mark.parametrize("width, size, batch", [(0.5, 112, 4), (0.25, 64, 16)])
def test_inference_peak_matches_the_summary_estimate(width, size, batch):
    model = cnnkit.models.vgg16(width=width, input_shape=(size, size, 3))
    x = np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32)
    model.forward(x)   # the first call also caches Winograd-transformed filters (weights, not activations)
    estimate = model.summary(batch_size=batch, format="dict")["memory"]["inference_activations_bytes"]
    tracemalloc.start()
    model.forward(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the estimate counts the live set (input, output and padded copy of the widest layer); the
    # rest is the convolution's blocked workspace, a few MB whatever the batch
    assert estimate <= peak <= 1.6 * estimate


def test_inference_keeps_no_activation_alive_after_forward():
    model = cnnkit.models.vgg16(width=0.25, input_shape=(64, 64, 3))
    x = np.random.default_rng(0).standard_normal((8, 64, 64, 3), dtype=np.float32)
    model.forward(x)
    tracemalloc.start()
    out = model.forward(x)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert current <= out.nbytes + 64 * 1024   # only the output (and small bookkeeping) survives
