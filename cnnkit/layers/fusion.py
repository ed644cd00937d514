"""Running a stack of layers forward and backward: fusion and in-place work, decided per call.

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

In-place work is decided here too, per call: a layer's input is handed over
(:meth:`Layer.forward_owned`) when it is a fresh output of the layer before
(``fresh_output``), never the caller's array; backward likewise hands a gradient over
(:meth:`Layer.backward_owned`) when the layer after made it fresh (``fresh_input_grad``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import Layer


def forward_layers(layers: list[Layer], x: np.ndarray, training_from: int = 0) -> np.ndarray:
    """Run ``x`` through ``layers``: those at positions ``>= training_from`` in training mode
    (``training_from=len(layers)``: all in inference mode), fusing each fusable pair.

    ``x`` itself is never written; later inputs are when the layer before made them fresh.
    """
    position, owned = 0, False
    while position < len(layers):
        layer, training = layers[position], position >= training_from
        after = layers[position + 1] if position + 1 < len(layers) else None
        if after is not None and after.fused_as in layer.fusable_activations \
                and (position + 1 >= training_from) == training:
            x = after.adopt_fused(layer.forward_fused(x, training, after.fused_as), training)
            position, owned = position + 2, after.fresh_output
        else:
            x = layer.forward_owned(x, training) if owned else layer.forward(x, training=training)
            position, owned = position + 1, layer.fresh_output
    return x


def backward_layers(layers: list[Layer], grad: np.ndarray, need_input_grad: bool = True,
                    on_layer_done: Callable[[Layer], None] | None = None) -> np.ndarray | None:
    """Back-propagate ``grad`` (the gradient of the last layer's output) through ``layers``, last
    first; return the gradient of the first layer's input (None when ``need_input_grad`` is False
    and the first layer can skip it).

    ``on_layer_done(layer)``, when given, is called as soon as ``layer``'s backward has returned,
    its parameters' gradients complete: data-parallel training starts sending them then, while
    the layers before it are still back-propagating.

    ``grad`` itself is never written; a layer's gradient is when the layer after made it fresh.
    """
    owned = False
    for position in range(len(layers) - 1, -1, -1):
        layer = layers[position]
        if position == 0 and not need_input_grad and layer.skips_input_grad:
            grad = layer.backward(grad, need_input_grad=False)
        else:
            grad = layer.backward_owned(grad) if owned else layer.backward(grad)
        owned = layer.fresh_input_grad
        if on_layer_done is not None:
            on_layer_done(layer)
    return grad
