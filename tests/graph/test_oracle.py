"""The issue's must-show: graphs built with the functional API match PyTorch, built by hand.

Each network is written twice: with ``cnnkit.Input``, layers called on tensors and
``cnnkit.Model``, and in this file with ``torch.nn.functional`` on the same weights (copied
from cnnkit: a convolution's weight is ``(KH, KW, Cin, Cout)`` here, ``(Cout, Cin, KH, KW)`` in
torch; a dense weight ``(in, out)`` here, ``(out, in)`` there; activations are channels-last here).
The forward pass, the input gradient and every parameter gradient agree within 1e-4 of their
scale in float32, and each model passes ``cnnkit.gradcheck`` in float64.
"""

import numpy as np
import pytest

import cnnkit
from cnnkit.layers import (Add, BatchNorm2d, Concatenate, Conv2d, Dense, Flatten, MaxPool2d, ReLU, Subtract)
from cnnkit.optim import SGD
from cnnkit.train import train_step

try:
    import torch
    import torch.nn.functional as F
except ImportError:   # the tests below are marked torch and skip
    torch = F = None

TOLERANCE = 1e-4


def _close(ours, theirs, what: str) -> None:
    """``ours`` equals ``theirs`` within TOLERANCE of ``theirs``' largest magnitude."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"{what}: shapes {ours.shape} and {theirs.shape}"
    scale = max(float(np.abs(theirs).max()), 1e-6)
    error = float(np.abs(ours - theirs).max()) / scale
    assert error < TOLERANCE, f"{what}: relative error {error:.2e}"


class TorchWeights:
    """The model's parameters as torch leaves in torch's layouts; gradients back in cnnkit's."""

    def __init__(self, model):
        self.leaves = {}
        for name, param in model.parameters().items():
            value = param.value
            layout = (3, 2, 0, 1) if value.ndim == 4 else (1, 0) if value.ndim == 2 else (0,)
            self.leaves[name] = (torch.tensor(np.ascontiguousarray(value.transpose(layout)), requires_grad=True),
                                 np.argsort(layout))

    def __getitem__(self, name):
        return self.leaves[name][0]

    def grads(self) -> dict[str, np.ndarray]:
        """Each leaf's gradient in cnnkit's layout (None where no gradient reached it)."""
        return {name: None if leaf.grad is None else leaf.grad.numpy().transpose(back)
                for name, (leaf, back) in self.leaves.items()}

    # the layers, by hand: NCHW inside, as torch computes
    def conv(self, h, name, stride=1, padding=0):
        bias = self.leaves[f"{name}.bias"][0] if f"{name}.bias" in self.leaves else None
        return F.conv2d(h, self[f"{name}.weight"], bias, stride=stride, padding=padding)

    def bn(self, h, name):
        # train mode: batch statistics (cnnkit's defaults eps=1e-5)
        return F.batch_norm(h, None, None, self[f"{name}.weight"], self[f"{name}.bias"], training=True, eps=1e-5)

    def dense(self, h, name):
        return F.linear(h, self[f"{name}.weight"], self[f"{name}.bias"])


def nchw(x_nhwc):
    return x_nhwc.permute(0, 3, 1, 2)


def nhwc(x_nchw):
    return x_nchw.permute(0, 2, 3, 1)


def flatten(h):
    """cnnkit's Flatten: (H, W, C) order."""
    return nhwc(h).reshape(h.shape[0], -1)


def _leaves(xs):
    return [torch.tensor(x, requires_grad=True) for x in xs]


def _compare_to_torch(model, xs, torch_forward):
    """Forward in training mode, backward of ``sum(y * probe)`` per output: cnnkit against torch."""
    rng = np.random.default_rng(7)
    several_in = len(model.inputs) > 1
    ours = model.forward(xs if several_in else xs[0], training=True)
    ours = ours if isinstance(ours, list) else [ours]
    probes = [rng.standard_normal(y.shape).astype(np.float32) for y in ours]
    model.zero_grad()
    dxs = model.backward(probes if len(probes) > 1 else probes[0])
    dxs = dxs if several_in else [dxs]

    weights = TorchWeights(model)
    leaves = _leaves(xs)
    theirs = torch_forward(weights, *leaves)
    theirs = theirs if isinstance(theirs, (list, tuple)) else [theirs]
    sum(torch.sum(y * torch.from_numpy(r)) for y, r in zip(theirs, probes)).backward()

    for index, (y, t) in enumerate(zip(ours, theirs)):
        _close(y, t.detach().numpy(), f"output {index}")
    for index, (dx, leaf) in enumerate(zip(dxs, leaves)):
        _close(dx, leaf.grad.numpy(), f"input {index} gradient")
    grads = weights.grads()
    for name, param in model.parameters().items():
        _close(param.grad, grads[name], f"{name} gradient")


def _gradcheck(model, xs, **options):
    result = cnnkit.gradcheck(model, [x.astype(np.float64) for x in xs] if len(xs) > 1 else xs[0].astype(np.float64),
                              max_entries=24, **options)
    assert result.passed(1e-6), result.errors
    return result


def _inputs(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


# ---------------------------------------------------------------- residual blocks
def projection_block(seed=1):
    """ResNet's downsampling block: conv-BN-ReLU-conv-BN plus a strided 1x1 projection-BN, Add, ReLU.

    The convolutions before batch norm have no bias, as in ResNet: batch norm cancels it, so its
    gradient is zero up to rounding and has no scale to compare against."""
    x = cnnkit.Input((6, 6, 3), name="image")
    y = Conv2d(4, 3, stride=2, padding=1, use_bias=False, name="a")(x)
    y = ReLU()(BatchNorm2d(name="a_bn")(y))
    y = BatchNorm2d(name="b_bn")(Conv2d(4, 3, padding=1, use_bias=False, name="b")(y))
    shortcut = BatchNorm2d(name="p_bn")(Conv2d(4, 1, stride=2, use_bias=False, name="p")(x))
    return cnnkit.Model(x, ReLU()(Add()([y, shortcut])), name="projection", seed=seed)


def torch_projection_block(w, x):
    h = nchw(x)
    y = F.relu(w.bn(w.conv(h, "a", stride=2, padding=1), "a_bn"))
    y = w.bn(w.conv(y, "b", padding=1), "b_bn")
    shortcut = w.bn(w.conv(h, "p", stride=2), "p_bn")
    return nhwc(F.relu(y + shortcut))


def identity_block(seed=2):
    """A stem (conv-BN-ReLU) and a block whose shortcut is the stem's output itself."""
    x = cnnkit.Input((5, 5, 2), name="image")
    stem = ReLU()(BatchNorm2d(name="s_bn")(Conv2d(3, 3, padding=1, use_bias=False, name="s")(x)))
    y = ReLU()(BatchNorm2d(name="a_bn")(Conv2d(3, 3, padding=1, use_bias=False, name="a")(stem)))
    y = BatchNorm2d(name="b_bn")(Conv2d(3, 3, padding=1, use_bias=False, name="b")(y))
    return cnnkit.Model(x, ReLU()(Add()([y, stem])), name="identity", seed=seed)


def torch_identity_block(w, x):
    stem = F.relu(w.bn(w.conv(nchw(x), "s", padding=1), "s_bn"))
    y = F.relu(w.bn(w.conv(stem, "a", padding=1), "a_bn"))
    y = w.bn(w.conv(y, "b", padding=1), "b_bn")
    return nhwc(F.relu(y + stem))


# ---------------------------------------------------------------- Inception
def inception_block(seed=3):
    """Branches 1x1, 3x3, 5x5 (padding same) and 3x3 max pool + 1x1, each with a ReLU, concatenated."""
    x = cnnkit.Input((6, 6, 4), name="image")
    b1 = ReLU()(Conv2d(3, 1, name="b1")(x))
    b3 = ReLU()(Conv2d(4, 3, padding="same", name="b3")(x))
    b5 = ReLU()(Conv2d(2, 5, padding="same", name="b5")(x))
    bp = ReLU()(Conv2d(2, 1, name="bp")(MaxPool2d(3, stride=1, padding=1)(x)))
    return cnnkit.Model(x, Concatenate()([b1, b3, b5, bp]), name="inception", seed=seed)


def torch_inception_block(w, x):
    h = nchw(x)
    b1 = F.relu(w.conv(h, "b1"))
    b3 = F.relu(w.conv(h, "b3", padding=1))
    b5 = F.relu(w.conv(h, "b5", padding=2))
    bp = F.relu(w.conv(F.max_pool2d(h, 3, stride=1, padding=1), "bp"))
    return nhwc(torch.cat([b1, b3, b5, bp], dim=1))


# ---------------------------------------------------------------- two outputs
def two_head_model(seed=4):
    """A shared trunk and two Dense heads (3 and 2 classes)."""
    x = cnnkit.Input((5, 5, 2), name="image")
    trunk = ReLU()(Conv2d(4, 3, padding=1, name="c")(x))
    trunk = ReLU()(Dense(6, name="fc")(Flatten()(MaxPool2d(2)(trunk))))
    return cnnkit.Model(x, [Dense(3, name="head1")(trunk), Dense(2, name="head2")(trunk)], name="two_heads",
                        seed=seed)


def torch_two_head_model(w, x):
    trunk = F.max_pool2d(F.relu(w.conv(nchw(x), "c", padding=1)), 2)
    trunk = F.relu(w.dense(flatten(trunk), "fc"))
    return w.dense(trunk, "head1"), w.dense(trunk, "head2")


# ---------------------------------------------------------------- Siamese
def siamese_model(merge: str, seed=5):
    """One Conv2d and one Dense object applied to two inputs; the two embeddings merged, then a Dense."""
    left, right = cnnkit.Input((5, 5, 2), name="left"), cnnkit.Input((5, 5, 2), name="right")
    conv, embed = Conv2d(3, 3, name="conv"), Dense(4, name="embed")
    features = [embed(Flatten()(ReLU()(conv(side)))) for side in (left, right)]
    merged = {"add": Add, "subtract": Subtract, "concat": Concatenate}[merge]()(features)
    return cnnkit.Model([left, right], Dense(2, name="out")(merged), name="siamese", seed=seed)


def torch_siamese_model(merge: str):
    def forward(w, left, right):
        features = [w.dense(flatten(F.relu(w.conv(nchw(side), "conv"))), "embed") for side in (left, right)]
        merged = {"add": lambda: features[0] + features[1], "subtract": lambda: features[0] - features[1],
                  "concat": lambda: torch.cat(features, dim=1)}[merge]()
        return w.dense(merged, "out")
    return forward


MODELS = {
    "projection": (projection_block, torch_projection_block, [(4, 6, 6, 3)]),
    "identity": (identity_block, torch_identity_block, [(4, 5, 5, 2)]),
    "inception": (inception_block, torch_inception_block, [(2, 6, 6, 4)]),
    "two_heads": (two_head_model, torch_two_head_model, [(3, 5, 5, 2)]),
    "siamese_add": (lambda: siamese_model("add"), torch_siamese_model("add"), [(3, 5, 5, 2)] * 2),
    "siamese_concat": (lambda: siamese_model("concat"), torch_siamese_model("concat"), [(3, 5, 5, 2)] * 2),
    "siamese_subtract": (lambda: siamese_model("subtract"), torch_siamese_model("subtract"), [(3, 5, 5, 2)] * 2),
}


@pytest.mark.torch
@pytest.mark.parametrize("kind", list(MODELS))
def test_forward_and_every_gradient_match_pytorch(kind):
    build, torch_forward, shapes = MODELS[kind]
    _compare_to_torch(build(), _inputs(*shapes), torch_forward)


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_gradient_passes_the_float64_gradient_check(kind):
    build, _, shapes = MODELS[kind]
    result = _gradcheck(build(), _inputs(*shapes, seed=11))
    checked = {"input"} if len(shapes) == 1 else {f"input[{i}]" for i in range(len(shapes))}
    assert checked | set(build().parameters()) == set(result.errors)


def test_the_shared_layers_have_one_set_of_weights():
    model = siamese_model("add")
    # one conv, one embed, one out: the second uses are nodes, not layers
    assert list(model.parameters()) == ["conv.weight", "conv.bias", "embed.weight", "embed.bias",
                                        "out.weight", "out.bias"]
    assert "conv:1" in model.node_names() and "embed:1" in model.node_names()


@pytest.mark.torch
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_train_step_on_a_weighted_sum_of_two_losses_matches_pytorch(momentum):
    model = two_head_model()
    x, = _inputs((4, 5, 5, 2), seed=12)
    labels = [np.array([0, 2, 1, 2]), np.array([1, 0, 0, 1])]
    loss_weights = [0.7, 2.5]
    weights = TorchWeights(model)
    before = {name: param.value.copy() for name, param in model.parameters().items()}
    optimizer = SGD(0.1, momentum=momentum, params=model.parameters())
    loss, scores = train_step(model, optimizer, x, labels, loss_weights=loss_weights)

    heads = torch_two_head_model(weights, torch.from_numpy(x))
    parts = [F.cross_entropy(head, torch.from_numpy(label)) for head, label in zip(heads, labels)]
    total = loss_weights[0] * parts[0] + loss_weights[1] * parts[1]
    total.backward()
    assert loss == pytest.approx(total.item(), rel=1e-5)
    for index, (ours, head) in enumerate(zip(scores, heads)):
        _close(ours, head.detach().numpy(), f"scores {index}")
    for name, grad in weights.grads().items():
        _close(model.parameters()[name].grad, grad, f"{name} gradient")
        # one SGD step from zero momentum: p - lr * g either way
        _close(model.parameters()[name].value, before[name] - 0.1 * grad, f"{name} after the step")


def test_the_loss_weights_scale_each_head_gradient():
    # gradients are linear in the loss weights: (a, b) gives a * (1, 0) + b * (0, 1)
    x, = _inputs((4, 5, 5, 2), seed=13)
    labels = [np.array([0, 2, 1, 2]), np.array([1, 0, 0, 1])]
    grads = {}
    for weights in [(1.0, 0.0), (0.0, 1.0), (0.7, 2.5)]:
        model = two_head_model()
        train_step(model, SGD(0.0, params=model.parameters()), x, labels, loss_weights=list(weights))
        grads[weights] = {name: param.grad.astype(np.float64) for name, param in model.parameters().items()}
    for name, grad in grads[(0.7, 2.5)].items():
        expected = 0.7 * grads[(1.0, 0.0)][name] + 2.5 * grads[(0.0, 1.0)][name]
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6, err_msg=name)
    assert not grads[(1.0, 0.0)]["head2.weight"].any()   # a head without loss gets no gradient


@pytest.mark.torch
def test_backward_of_two_output_gradients_matches_pytorch():
    # model.backward([g1, g2]) and model.backward([g1, None]) (an output without loss)
    model = two_head_model()
    x, = _inputs((3, 5, 5, 2), seed=14)
    y1, y2 = model.forward(x, training=True)
    rng = np.random.default_rng(15)
    g1, g2 = rng.standard_normal(y1.shape).astype(np.float32), rng.standard_normal(y2.shape).astype(np.float32)
    for gradients in ([g1, g2], [g1, None]):
        model.zero_grad()
        model.forward(x, training=True)
        dx = model.backward(gradients)
        weights = TorchWeights(model)
        leaf, = _leaves([x])
        heads = torch_two_head_model(weights, leaf)
        sum(torch.sum(h * torch.from_numpy(g)) for h, g in zip(heads, gradients) if g is not None).backward()
        _close(dx, leaf.grad.numpy(), "input gradient")
        for name, grad in weights.grads().items():
            if gradients[1] is None and name.startswith("head2"):
                assert model.parameters()[name].grad is None
                continue
            _close(model.parameters()[name].grad, grad, f"{name} gradient")
