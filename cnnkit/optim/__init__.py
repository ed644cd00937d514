"""Optimizers (SGD, Adam, AdamW), gradient clipping and learning-rate schedules.

Optimizers update named parameters (``model.parameters()``) in place; bind them at
construction (``params=``) or later with ``opt.bind(...)``. See :mod:`cnnkit.optim.base` for
parameter groups and how a group's lr follows the base lr.
"""

from cnnkit.optim.base import Optimizer
from cnnkit.optim.clip import clip_grad_norm, global_grad_norm
from cnnkit.optim.optimizers import SGD, Adam, AdamW
from cnnkit.optim.schedules import (
    CosineAnnealingLR,
    OneCycleLR,
    ReduceLROnPlateau,
    Schedule,
    StepLR,
)

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "OneCycleLR",
    "Optimizer",
    "ReduceLROnPlateau",
    "Schedule",
    "StepLR",
    "clip_grad_norm",
    "global_grad_norm",
]
