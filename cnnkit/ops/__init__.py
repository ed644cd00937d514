"""Stateless kernels on arrays: each forward beside the backward that matches it.

One entry per op: a convolution is :func:`conv2d` / :func:`conv2d_backward`, whatever algorithm
computes it (the table :data:`ALGORITHMS` of :mod:`cnnkit.ops.conv`); windows are a
:class:`cnnkit.arithmetic.Geometry`; measured constants live in :mod:`cnnkit.ops.tuning` and the
cutting of work into parts in :mod:`cnnkit.ops.parts`.

The process settings they run under (threads, BLAS, malloc) are :mod:`cnnkit.ops.runtime`'s.
"""

from .activation import (clip, clip_backward, elu, elu_backward, hard_sigmoid, hard_sigmoid_backward, hard_swish,
                         hard_swish_backward, leaky_relu, leaky_relu_backward, maxout, maxout_backward, prelu,
                         prelu_backward, relu, relu6, relu6_backward, relu_backward, sigmoid, sigmoid_backward, tanh,
                         tanh_backward)
from .conv import ALGORITHMS, ConvContext, choose_algorithm, conv2d, conv2d_backward
from .depthwise import depthwise_conv2d, depthwise_conv2d_backward
from .linear import linear, linear_backward
from .loss import log_softmax, log_softmax_backward, softmax, softmax_backward, softmax_cross_entropy
from .norm import (batch_norm_fixed, batch_norm_frozen, batch_norm_frozen_backward, batch_norm_train,
                   batch_norm_train_backward, folded_weights, update_running)
from .pool import (avg_pool2d, avg_pool2d_backward, global_avg_pool2d, global_avg_pool2d_backward,
                   global_max_pool2d, global_max_pool2d_backward, max_pool2d, max_pool2d_backward)
from .reduce import sum_rows
from .window import input_rows, pad, tap_slices, unpad, window_add, windowed_view

__all__ = [
    "clip", "clip_backward", "elu", "elu_backward", "hard_sigmoid", "hard_sigmoid_backward", "hard_swish",
    "hard_swish_backward", "leaky_relu", "leaky_relu_backward", "maxout", "maxout_backward", "prelu",
    "prelu_backward", "relu",
    "relu6", "relu6_backward", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "ALGORITHMS", "ConvContext", "choose_algorithm", "conv2d", "conv2d_backward",
    "depthwise_conv2d", "depthwise_conv2d_backward",
    "linear", "linear_backward",
    "log_softmax", "log_softmax_backward", "softmax", "softmax_backward", "softmax_cross_entropy",
    "batch_norm_fixed", "batch_norm_frozen", "batch_norm_frozen_backward", "batch_norm_train",
    "batch_norm_train_backward", "folded_weights", "update_running",
    "avg_pool2d", "avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward", "global_max_pool2d",
    "global_max_pool2d_backward", "max_pool2d", "max_pool2d_backward",
    "sum_rows",
    "input_rows", "pad", "tap_slices", "unpad", "window_add", "windowed_view",
]
