"""cnnkit's ResNet-18 and ResNet-50 against the same networks written by hand in torch
(``tests/torch_resnet.py``, torchvision's layout) with the same random weights: logits in eval
mode, and for ResNet-18 every gradient and the running statistics of a training step.

64 x 64 images keep every stage (layer4 is 2 x 2) at full width, in about a second each.
"""

import numpy as np
import pytest

import cnnkit

pytestmark = pytest.mark.torch
try:
    import torch
    from torch_resnet import TorchResNet, as_cnnkit, cnnkit_state, images, randomised, relative_error
except ImportError:   # the marker skips every test
    torch = None

RTOL = 1e-4


def twins(depth: int):
    """A torch ResNet with random weights and running statistics, and cnnkit's holding the same."""
    net = randomised(TorchResNet(depth))
    model = getattr(cnnkit.models, f"resnet{depth}")(input_shape=(64, 64, 3))
    model.load_state_dict(cnnkit_state(net))   # every key of the model, none left over (strict)
    return net, model


@pytest.mark.parametrize("depth", [18, 50])
def test_logits_match_torch_in_eval_mode(depth):
    net, model = twins(depth)
    x, x_nhwc = images()
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    assert relative_error(model.predict(x_nhwc), expected) <= RTOL
    assert np.abs(expected).max() > 1   # a meaningful scale: the random statistics kept the signal


def test_resnet18_gradients_and_running_statistics_match_torch_in_training_mode():
    net, model = twins(18)
    x, x_nhwc = images()
    x.requires_grad_(True)
    projection = np.random.default_rng(2).standard_normal((2, 1000)).astype(np.float32)
    (net.train()(x) * torch.from_numpy(projection)).sum().backward()

    model.forward(x_nhwc, training=True)
    dx = model.backward(projection)

    assert relative_error(dx, x.grad.permute(0, 2, 3, 1).numpy()) <= RTOL
    ours = model.parameters()
    theirs = dict(net.named_parameters())
    assert set(ours) == set(theirs)
    errors = {key: relative_error(ours[key].grad, as_cnnkit(param.grad.numpy(), key))
              for key, param in theirs.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= RTOL, f"{worst}: relative error {errors[worst]:.2e}"
    # the batch statistics moved the running ones as torch's (momentum 0.1, unbiased variance)
    state = net.state_dict()
    for key, value in model.buffers().items():
        assert relative_error(value, state[key].numpy()) <= RTOL, key
