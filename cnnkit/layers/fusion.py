"""Running a stack of layers forward, with a convolution and the ReLU after it fused.

A ``Conv2d`` followed by a ``ReLU`` layer is the lecture's CONV -> RELU. Run one layer at a
time, the ReLU reads and writes the whole output volume once more forward, and the gradient
volume once more backward. Fused, the convolution applies the ReLU as it writes each output
tile, and masks the gradient as it reads it (:meth:`Layer.forward_fused`); the ReLU layer
adopts that output (:meth:`Layer.adopt_fused`) and passes the gradient through. The numbers
are the same as unfused; only the passes over memory go. Both layers keep their caches, so
backward still runs one layer at a time.

A pair is fused only when both layers run in the same mode and nobody looks between them: a
caller that wants the convolution's own output (``Sequential.features`` up to it) stops the
stack there.
"""

from __future__ import annotations

import numpy as np

from .base import Layer


def forward_layers(layers: list[Layer], x: np.ndarray, training_from: int = 0) -> np.ndarray:
    """Run ``x`` through ``layers``: those at positions ``>= training_from`` in training mode
    (``training_from=len(layers)``: all in inference mode), fusing each fusable pair."""
    position = 0
    while position < len(layers):
        layer, training = layers[position], position >= training_from
        after = layers[position + 1] if position + 1 < len(layers) else None
        if after is not None and after.fused_as in layer.fusable_activations \
                and (position + 1 >= training_from) == training:
            x = after.adopt_fused(layer.forward_fused(x, training, after.fused_as), training)
            position += 2
        else:
            x = layer.forward(x, training=training)
            position += 1
    return x
