"""cnnkit's MobileNetV2 against the same network written by hand in torch
(``tests/torch_mobilenet.py``, torchvision's layout) with the same random weights: logits in eval
mode at full width (float32), and every gradient and the running statistics of a training step at
half width (float64; see that test for why).
"""

import re

import numpy as np
import pytest

import cnnkit

pytestmark = pytest.mark.torch
try:
    import torch
    from torch_mobilenet import TorchMobileNetV2, as_cnnkit, cnnkit_state
    from torch_resnet import images, randomised, relative_error
except ImportError:   # the marker skips every test
    torch = None

RTOL = 1e-4


def twins(size: int, width_mult: float = 1.0, classes: int = 1000, dropout: float = 0.2):
    """A torch MobileNetV2 with random weights and running statistics, and cnnkit's holding the same."""
    net = randomised(TorchMobileNetV2(classes, width_mult, dropout))
    model = cnnkit.models.mobilenet_v2(width_mult=width_mult, input_shape=(size, size, 3), num_classes=classes,
                                       dropout=dropout)
    model.load_state_dict(cnnkit_state(net))   # every key of the model, none left over (strict)
    return net, model


def test_logits_match_torch_in_eval_mode():
    net, model = twins(64)
    x, x_nhwc = images(size=64)
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    assert relative_error(model.predict(x_nhwc), expected) <= RTOL
    assert np.abs(expected).max() > 1   # a meaningful scale: the random statistics kept the signal


def test_features_13_match_torchs_block_output():
    net, model = twins(64)
    x, x_nhwc = images(size=64)
    with torch.no_grad():
        expected = net.eval().features[:14](x).permute(0, 2, 3, 1).numpy()
    ours = model.features(x_nhwc, "features.13")
    assert ours.shape == (2, 4, 4, 96) and relative_error(ours, expected) <= RTOL


def test_gradients_and_running_statistics_match_torch_in_training_mode():
    """Every gradient of a training step, in float64 on both sides.

    In float32 this comparison measures rounding, not the gradient: 52 batch norms on batch
    statistics amplify the last bits, and a ReLU6 mask flips where a normalised value lies within
    them of 0 (the depthwise output of an all-zero window): at 128 x 128, cnnkit's float32 block
    outputs agreed with float64 to 2e-5 and torch's to 1e-5, yet one flip moved a bias gradient
    by 14%. In float64 both agree to rounding. 64 x 64 keeps the last blocks at 2 x 2: at 1 x 1 a batch of 2 gives
    each batch norm two values, which it maps to -1 and +1 whatever they are (a zero gradient).
    """
    net, model = twins(64, width_mult=0.5, classes=10, dropout=0.0)   # no dropout: each framework draws its own
    net = net.double()
    x, x_nhwc = images(size=64)
    x = x.double().requires_grad_(True)
    projection = np.random.default_rng(2).standard_normal((2, 10))
    (net.train()(x) * torch.from_numpy(projection)).sum().backward()

    model.forward(x_nhwc.astype(np.float64), training=True)
    dx = model.backward(projection)

    assert dx.dtype == np.float64
    assert relative_error(dx, x.grad.permute(0, 2, 3, 1).numpy()) <= RTOL
    ours = model.parameters()
    theirs = {key: as_cnnkit(param.grad.numpy(), key) for key, param in net.named_parameters()}
    assert set(ours) == set(theirs)
    # a projection's batch-norm bias shifts every value of a channel alike, and the next training-mode
    # batch norm (after a 1x1 convolution) takes any shift away: its gradient is 0, up to rounding
    shifted = {key for key in theirs if re.fullmatch(r"features\.(1\.conv\.2|\d+\.conv\.3)\.bias", key)}
    assert len(shifted) == 17
    scale = max(np.abs(grad).max() for grad in theirs.values())
    for key in shifted:
        assert np.abs(theirs[key]).max() <= 1e-10 * scale and np.abs(ours[key].grad).max() <= 1e-10 * scale, key
    errors = {key: relative_error(ours[key].grad, grad) for key, grad in theirs.items() if key not in shifted}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, f"{worst}: relative error {errors[worst]:.2e}"
    # the batch statistics moved the running ones as torch's (momentum 0.1, unbiased variance)
    state = net.state_dict()
    for key, value in model.buffers().items():
        assert relative_error(value, state[key].numpy()) <= RTOL, key
