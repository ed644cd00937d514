"""Networks pretrained on the digits 0-4, shared by the transfer tests (each trained once, in seconds):
a chain (``vgg_small``) and a graph (a small residual network built with the functional API)."""

import pytest

import cnnkit
from cnnkit.experiments import digit_halves, pretrained_digits_net
from cnnkit.layers import Add, BatchNorm2d, Conv2d, Dense, GlobalAvgPool2d, MaxPool2d, ReLU, Softmax
from cnnkit.optim import SGD


@pytest.fixture(scope="session")
def pretrained():
    return pretrained_digits_net(seed=0)


@pytest.fixture(scope="session")
def halves():
    """((0-4 train, 5-9 train), (0-4 test, 5-9 test))."""
    return digit_halves("train"), digit_halves("test")


def residual_digits_net(seed: int = 0) -> cnnkit.Model:
    """Two residual blocks on 8x8x1 digits: the first with an identity shortcut, the second (after
    pooling, wider) with a 1x1 projection shortcut; global average pooling and a 5-way classifier."""
    x = cnnkit.Input((8, 8, 1), name="image")
    y = ReLU(name="stem_relu")(BatchNorm2d(name="stem_bn")(Conv2d(8, 3, padding=1, name="stem")(x)))
    r = ReLU(name="res1_relu")(Conv2d(8, 3, padding=1, name="res1_conv1")(y))
    y = ReLU(name="block1")(Add(name="res1_add")([Conv2d(8, 3, padding=1, name="res1_conv2")(r), y]))
    y = MaxPool2d(2, name="pool1")(y)
    r = ReLU(name="res2_relu")(Conv2d(16, 3, padding=1, name="res2_conv1")(y))
    r = Conv2d(16, 3, padding=1, name="res2_conv2")(r)
    y = ReLU(name="block2")(Add(name="res2_add")([r, Conv2d(16, 1, name="res2_proj")(y)]))
    y = Softmax(name="prob")(Dense(5, name="fc")(GlobalAvgPool2d(name="gap")(y)))
    return cnnkit.Model(x, y, name="resnet_digits", seed=seed)


@pytest.fixture(scope="session")
def pretrained_graph(halves):
    """The residual network trained on the digits 0-4 (test accuracy about 0.97)."""
    (old, _), _ = halves
    net = residual_digits_net()
    net.meta["class_names"] = list(old.classes)
    net.fit(old, epochs=4, batch_size=32, optimizer=SGD(lr=0.05, momentum=0.9), seed=0, verbose=0)
    return net
