"""The summary's memory estimates against the peaks that inference and training really allocate
(tracemalloc sees every NumPy array)."""

import tracemalloc

import numpy as np
import pytest

import cnnkit
from cnnkit.layers import Add, BatchNorm2d, Conv2d, Dense, GlobalAvgPool2d, MaxPool2d, ReLU
from cnnkit.live_set import inference_peak
from cnnkit.ops import jit
from cnnkit.train import train_step


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


# ----------------------------------------------------------------- a graph: the executor's live set

def _resnet_style(size: int = 224) -> cnnkit.Model:
    """A ResNet-50-like start: 7x7/2 stem and max pool, then bottleneck blocks (1x1, 3x3, 1x1)
    with projection shortcuts (the first block of a stage) and identity shortcuts."""
    x = cnnkit.Input((size, size, 3), name="image")
    y = ReLU(name="stem_relu")(Conv2d(64, 7, stride=2, padding=3, name="stem")(x))
    y = MaxPool2d(3, 2, padding=1, name="stem_pool")(y)
    for name, (mid, out, stride) in {"b1": (64, 256, 1), "b2": (64, 256, 1),
                                     "b3": (128, 512, 2), "b4": (128, 512, 1)}.items():
        r = ReLU()(Conv2d(mid, 1, name=f"{name}_a")(y))
        r = ReLU()(Conv2d(mid, 3, stride=stride, padding=1, name=f"{name}_b")(r))
        r = Conv2d(out, 1, name=f"{name}_c")(r)
        projection = stride != 1 or y.shape[-1] != out
        shortcut = Conv2d(out, 1, stride=stride, name=f"{name}_proj")(y) if projection else y
        y = ReLU(name=f"{name}_relu")(Add(name=f"{name}_add")([r, shortcut]))
    return cnnkit.Model(x, Dense(10, name="fc")(GlobalAvgPool2d(name="gap")(y)), name="resnet_style")


@pytest.fixture
def compiled_kernels(monkeypatch):
    # the summary counts the compiled paths' memory (the default); the NumPy references' im2col
    # chunks and Winograd transforms are workspaces it does not model
    monkeypatch.setenv("CNNKIT_JIT", "1")
    assert jit.enabled(), "Numba is a dependency of cnnkit; install it"


BATCH = 4


def test_resnet_style_inference_live_set_matches_the_measured_peak(compiled_kernels):
    model = _resnet_style()
    x = np.random.default_rng(0).standard_normal((BATCH, 224, 224, 3), dtype=np.float32)
    memory = model.summary(batch_size=BATCH, format="dict")["memory"]
    model.predict(x, batch_size=BATCH)   # the first call caches Winograd-transformed filters
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    model.predict(x, batch_size=BATCH)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    # the largest live set is in the first block: the pool's output (read by the projection),
    # the residual branch's output and the projection's; the skip keeps a tensor alive
    assert memory["inference_peak_at"] == "b1_proj"
    assert abs(peak - memory["inference_activations_bytes"]) <= 0.15 * peak


def test_resnet_style_training_step_matches_the_measured_peak(compiled_kernels):
    model = _resnet_style()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 224, 224, 3), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    optimizer = cnnkit.optim.SGD(0.001, momentum=0.9, params=model.parameters())
    memory = model.summary(batch_size=BATCH, format="dict")["memory"]
    train_step(model, optimizer, x, y)   # momentum buffers and caches exist from now on
    tracemalloc.start()
    # a step traced whole, so that the next one's frees of what it made (the Winograd filters of
    # the weights it changed) are seen; then no gradients, as at the start of training
    train_step(model, optimizer, x, y)
    model.zero_grad()
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    train_step(model, optimizer, x, y)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    assert abs(peak - memory["training_peak_bytes"]) <= 0.15 * peak


# ----------------------------------------------------------------- batch norm folded into its convolution

def test_a_folded_batch_norm_allocates_nothing_of_its_own():
    def peak(layers, fold=True):
        model = cnnkit.Sequential(layers, input_shape=(16, 16, 3), seed=0)
        sizes = {t: int(np.prod(model.tensor_shape(t))) for t in range(len(model.plan.steps) + 1)}
        return inference_peak(model.plan, sizes, model.plan.outputs, BATCH, fold)

    folded = peak([Conv2d(8, 3, padding=1, name="conv"), BatchNorm2d(name="bn"), ReLU()])
    # the pair and its ReLU cost what a convolution with its own ReLU costs: its input and output
    assert folded == peak([Conv2d(8, 3, padding=1, activation="relu", name="conv")])
    unfolded = peak([Conv2d(8, 3, padding=1, name="conv"), BatchNorm2d(name="bn"), ReLU()], fold=False)
    assert unfolded.step == "bn" and unfolded.bytes == 2 * BATCH * 16 * 16 * 8 * 4   # conv's output and bn's


@pytest.mark.parametrize("fold", [True, False])
def test_resnet18_inference_live_set_matches_the_measured_peak_folded_or_not(compiled_kernels, fold):
    # at 224 the activations dwarf the kernels' per-worker blocks (about 1 MB each, not counted)
    model = cnnkit.models.resnet18(num_classes=10)
    x = np.random.default_rng(0).standard_normal((BATCH, 224, 224, 3), dtype=np.float32)
    with cnnkit.runtime(fold_batch_norm=fold):
        memory = model.summary(batch_size=BATCH, format="dict")["memory"]
        model.predict(x, batch_size=BATCH)   # the first call caches folded weights and Winograd filters
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        model.predict(x, batch_size=BATCH)
        peak = tracemalloc.get_traced_memory()[1] - start
        tracemalloc.stop()
    # folded, the stem's batch norm allocates nothing: the peak moves from bn1 (conv1's output and
    # bn1's) to the max pooling (the stem's output and the pool's)
    assert memory["inference_peak_at"] == ("maxpool" if fold else "bn1")
    assert abs(peak - memory["inference_activations_bytes"]) <= 0.05 * peak
