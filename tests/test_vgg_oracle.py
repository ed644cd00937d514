"""The whole network as one function: cnnkit's VGG16 against PyTorch's with the same weights."""

import numpy as np
import pytest

import cnnkit
from cnnkit.layers import Conv2d, Dense, Dropout

torch = pytest.importorskip("torch", reason="PyTorch, the test-only oracle, is not installed: pip install torch==2.13.0")
nn = torch.nn


def torch_vgg16(model):
    """torchvision's VGG16 layout built from plain torch modules, holding ``model``'s weights."""
    features, classifier = [], []
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            conv = nn.Conv2d(layer.input_shape[2], layer.filters, 3, padding=1)
            conv.weight.data = torch.from_numpy(layer.parameters()["weight"].value.transpose(3, 2, 0, 1).copy())
            conv.bias.data = torch.from_numpy(layer.parameters()["bias"].value.copy())
            features += [conv, nn.ReLU()]
        elif type(layer).__name__ == "MaxPool2d":
            features.append(nn.MaxPool2d(2, 2))
        elif isinstance(layer, Dense):
            linear = nn.Linear(*layer.parameters()["weight"].shape)
            weight = layer.parameters()["weight"].value
            if layer.name == "fc6":   # cnnkit flattens (H, W, C); torch flattens (C, H, W)
                h, w, c = model["pool5"].output_shape
                weight = weight.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
            linear.weight.data = torch.from_numpy(np.ascontiguousarray(weight.T))
            linear.bias.data = torch.from_numpy(layer.parameters()["bias"].value.copy())
            classifier += [linear, nn.ReLU(), nn.Dropout()]
    return nn.Sequential(*features, nn.Flatten(), *classifier[:-2]).eval()


def test_vgg16_matches_pytorch_on_a_224_image():
    model = cnnkit.models.vgg16(classifier_activation=None, seed=0)
    for layer in model.layers:   # keep the logits well away from zero so the relative check is meaningful
        if isinstance(layer, Dense):
            layer.parameters()["bias"].value = np.linspace(-1, 1, layer.units, dtype=np.float32)
    image = np.random.default_rng(1).standard_normal((1, 224, 224, 3)).astype(np.float32)
    ours = model.forward(image)
    with torch.no_grad():
        theirs = torch_vgg16(model)(torch.from_numpy(image.transpose(0, 3, 1, 2).copy())).numpy()
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
    assert not any(isinstance(layer, Dropout) and layer._cache is not None for layer in model.layers)
