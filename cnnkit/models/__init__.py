"""Architectures, each a function returning a built :class:`cnnkit.Sequential`."""

from .classic import alexnet, allconv, lenet5
from .vgg import vgg, vgg11, vgg13, vgg16, vgg16c, vgg19, vgg_small

MODELS = {"vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg16c": vgg16c, "vgg19": vgg19,
          "lenet5": lenet5, "alexnet": alexnet, "allconv": allconv, "vgg_small": vgg_small}

#: The architectures that released pretrained weights load into (by cnnkit.io.load_pretrained).
PRETRAINED_ARCHS = ("vgg11", "vgg13", "vgg16", "vgg16c", "vgg19")

__all__ = ["PRETRAINED_ARCHS", "vgg", "vgg11", "vgg13", "vgg16", "vgg16c", "vgg19", "lenet5", "alexnet", "allconv", "vgg_small", "MODELS"]
