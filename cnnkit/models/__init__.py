"""Architectures, each a function returning a built model: a :class:`cnnkit.Sequential` (VGG, the
classic networks) or a graph :class:`cnnkit.Model` (ResNet, MobileNetV2)."""

from .classic import alexnet, allconv, lenet5
from .mobilenet import mobilenet_v2
from .resnet import resnet, resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import vgg, vgg11, vgg13, vgg16, vgg16c, vgg19, vgg_small

MODELS = {"vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg16c": vgg16c, "vgg19": vgg19,
          "lenet5": lenet5, "alexnet": alexnet, "allconv": allconv, "vgg_small": vgg_small,
          "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
          "resnet152": resnet152, "mobilenet_v2": mobilenet_v2}

#: The architectures that released pretrained weights load into (by cnnkit.io.load_pretrained).
PRETRAINED_ARCHS = ("vgg11", "vgg13", "vgg16", "vgg16c", "vgg19", "resnet18", "resnet34", "resnet50", "resnet101",
                    "resnet152", "mobilenet_v2")

__all__ = ["MODELS", "PRETRAINED_ARCHS", "mobilenet_v2", "resnet", "resnet18", "resnet34", "resnet50", "resnet101",
           "resnet152", "vgg", "vgg11", "vgg13", "vgg16", "vgg16c", "vgg19", "lenet5", "alexnet", "allconv", "vgg_small"]
