"""Architectures, each a function returning a built :class:`cnnkit.Sequential`."""

from .classic import alexnet, allconv, lenet5
from .vgg import vgg, vgg11, vgg13, vgg16, vgg16c, vgg19, vgg_small

MODELS = {"vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg16c": vgg16c, "vgg19": vgg19,
          "lenet5": lenet5, "alexnet": alexnet, "allconv": allconv, "vgg_small": vgg_small}

__all__ = ["vgg", "vgg11", "vgg13", "vgg16", "vgg16c", "vgg19", "lenet5", "alexnet", "allconv", "vgg_small", "MODELS"]
