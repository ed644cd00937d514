"""The lecture's formulas against hand-worked cases, and the text of every impossible configuration."""

import copy
import pickle
from fractions import Fraction

import numpy as np
import pytest

from cnnkit.arithmetic import (Geometry, ReceptiveField, Window, conv_macs, conv_params, conv_transpose_output_size,
                               dense_macs, dense_params, transposed_windows,
                               batchnorm_params, maxout_params, merged_field, narrowest_field,
                               optimizer_state_count, padding_amounts, prelu_params, unread_rows,
                               window_output_size, windows_2d)
from cnnkit.errors import CnnkitError, ConfigError
from cnnkit.layers import Conv2d


@pytest.mark.parametrize("h, k, s, p, d, expected", [
    (224, 3, 1, 1, 1, 224),   # VGG's "same" 3x3
    (227, 11, 4, 0, 1, 55),   # AlexNet conv1: (227 - 11)/4 + 1
    (32, 5, 1, 0, 1, 28),     # LeNet c1
    (32, 5, 2, 0, 1, 14),     # floor((32 - 5)/2) + 1 = 14 (14.5 floored)
    (7, 3, 2, 1, 1, 4),       # (7 - 3 + 2)/2 + 1
    (10, 3, 1, 0, 2, 6),      # dilation 2: span 5 -> 10 - 5 + 1
    (5, 1, 3, 0, 1, 2),       # kernel 1 stride 3 -> floor(4/3) + 1
    (224, 2, 2, 0, 1, 112),   # the lecture's pooling K=2, S=2
])
def test_output_size_hand_worked(h, k, s, p, d, expected):
    assert window_output_size(h, Window(k, s, p, p, d)) == expected


@pytest.mark.parametrize("h, k, s, expected_pads, expected_out", [
    (224, 3, 1, (1, 1), 224),
    (7, 3, 2, (1, 1), 4),      # ceil(7/2) = 4
    (8, 3, 2, (0, 1), 4),      # ceil(8/2) = 4, odd total padding goes after
    (5, 4, 1, (1, 2), 5),
])
def test_same_padding_gives_ceil_h_over_s(h, k, s, expected_pads, expected_out):
    pads = padding_amounts("same", h, k, s, 1, 0, "conv")
    assert pads == expected_pads
    assert window_output_size(h, Window(k, s, *pads)) == expected_out


def test_full_and_valid_padding():
    assert padding_amounts("full", 10, 3, 1, 1, 0, "conv") == (2, 2)
    assert padding_amounts("full", 10, 3, 1, 2, 0, "conv") == (4, 4)
    assert padding_amounts("valid", 10, 3, 1, 1, 0, "conv") == (0, 0)
    assert padding_amounts((1, 2), 10, 3, 1, 1, 1, "conv") == (2, 2)


@pytest.mark.parametrize("size, kernel, stride, padding, dilation", [
    ((9, 7), 3, 2, "same", 1), ((10, 12), (5, 1), (2, 3), (2, 0), (2, 1)), ((6, 6), 1, 1, 0, 1), ((8, 8), 2, 2, 0, 1)])
def test_geometry_derives_once_what_every_kernel_needs(size, kernel, stride, padding, dilation):
    geometry = windows_2d(size, kernel, stride, padding, dilation, "conv")
    wh, ww = geometry
    assert isinstance(geometry, Geometry) and geometry == (wh, ww) and Geometry((wh, ww)) == geometry
    assert geometry.output_hw(size) == tuple(window_output_size(n, win) for n, win in zip(size, geometry))
    assert geometry.padded_shape((2, *size, 3)) == (2, size[0] + sum(wh.pads), size[1] + sum(ww.pads), 3)
    assert geometry.kernel_args == (wh.kernel, ww.kernel, wh.stride, ww.stride, wh.pad_before, ww.pad_before,
                                    wh.dilation, ww.dilation)
    assert geometry.padded == any(wh.pads + ww.pads)
    assert geometry.stride_one == (wh.stride == ww.stride == 1)
    assert geometry.dilation_one == (wh.dilation == ww.dilation == 1)
    ho, wo = geometry.output_hw(size)
    assert geometry.output_tiles(size, 4) == (-(-ho // 4), -(-wo // 4))
    # the windows tile the plane exactly: disjoint and covering every pixel once
    def read(o, win, n):   # the input rows (or columns) that window o reads
        return [r for r in (o * win.stride - win.pad_before + t * win.dilation for t in range(win.kernel)) if 0 <= r < n]

    covered = np.zeros(size, int)
    for i in range(ho):
        for j in range(wo):
            covered[np.ix_(read(i, wh, size[0]), read(j, ww, size[1]))] += 1
    assert geometry.tiles_exactly(size) == (not geometry.padded and bool(np.all(covered == 1)))
    restored = pickle.loads(pickle.dumps(geometry))
    assert restored == geometry and restored.kernel_args == geometry.kernel_args
    assert copy.deepcopy(geometry).output_hw(size) == (ho, wo)


def test_unread_rows_counts_input_rows_no_window_reads():
    assert unread_rows(32, Window(5, 2, 0, 0)) == 1
    assert unread_rows(32, Window(4, 2, 0, 0)) == 0
    assert unread_rows(7, Window(2, 2, 0, 0)) == 1
    assert unread_rows(11, Window(3, 4, 0, 0)) == 2  # rows 3 and 7 fall between windows of 3 every 4


def test_strict_division_error_quotes_the_formula():
    with pytest.raises(ConfigError) as error:
        window_output_size(32, Window(5, 2, 0, 0), "conv3", "H", strict=True)
    assert str(error.value).startswith(
        "conv3: (H - K + 2P)/S + 1 = (32 - 5 + 0)/2 + 1 = 14.5 is not a whole number")


def test_kernel_larger_than_padded_input():
    with pytest.raises(ConfigError, match=r"conv3: kernel_size=5 does not fit the padded input along H "
                                          r"\(H \+ 2P = 4 < K = 5\); lower kernel_size or raise padding"):
        window_output_size(4, Window(5, 1, 0, 0), "conv3", "H")


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel_size=3, stride=0, padding=0, dilation=1), "conv1: stride must be at least 1 (the window must move "
                                                           "by at least one pixel); received stride=0"),
    (dict(kernel_size=0, stride=1, padding=0, dilation=1), "conv1: kernel_size must be at least 1"),
    (dict(kernel_size=3, stride=1, padding=0, dilation=0), "conv1: dilation must be at least 1"),
    (dict(kernel_size=3, stride=1, padding="wide", dilation=1),
     "conv1: padding must be an int, a pair of ints, a pair of pairs ((top, bottom), (left, right)) or "
     "one of ('valid', 'same', 'full'); received padding='wide'"),
    (dict(kernel_size=3, stride=1, padding=-1, dilation=1), "conv1: padding must be >= 0; received padding=-1"),
    (dict(kernel_size=2.5, stride=1, padding=0, dilation=1), "conv1: kernel_size must be an int or a pair of ints; "
                                                             "received kernel_size=2.5"),
])
def test_impossible_windows_raise_config_errors(kwargs, message):
    with pytest.raises(CnnkitError) as error:
        windows_2d((8, 8), layer="conv1", **kwargs)
    assert str(error.value).startswith(message)


def test_parameter_counts():
    assert conv_params(64, (3, 3), 3) == 64 * 3 * 3 * 3 + 64 == 1792
    assert conv_params(64, (3, 3), 3, bias=False) == 1728
    assert conv_params(96, (11, 11), 3) == 34944
    assert dense_params(25088, 4096) == 102_764_544
    assert batchnorm_params(64) == (128, 128)
    assert prelu_params(32) == 32
    assert maxout_params(10, 4, 3) == 3 * (10 * 4 + 4)


def test_macs():
    assert conv_macs((224, 224, 64), (3, 3), 3) == 224 * 224 * 64 * 27
    assert dense_macs(4096, 1000) == 4_096_000


def test_optimizer_state():
    assert optimizer_state_count(10, "sgd") == 0
    assert optimizer_state_count(10, "momentum") == 10
    assert optimizer_state_count(10, "adam") == 20
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        optimizer_state_count(10, "rmsprop")


def test_receptive_field_recurrence_by_hand():
    field = ReceptiveField()
    for window in [Window(3, 1, 1, 1)] * 2 + [Window(2, 2, 0, 0)]:
        field = field.through(window)
    assert (field.size, field.jump) == (6, 2)   # VGG block 1 then pool1
    field = ReceptiveField().through(Window(11, 4, 0, 0))
    assert (field.size, field.jump, field.start) == (11, 4, 5.5)
    dilated = ReceptiveField().through(Window(3, 1, 2, 2, dilation=2))
    assert (dilated.size, dilated.start) == (5, 0.5)


def test_merged_field_is_the_union_of_the_inputs_fields():
    # a residual block: two 3x3 "same" convolutions beside the identity, centred alike
    conv_path = ReceptiveField().through(Window(3, 1, 1, 1)).through(Window(3, 1, 1, 1))
    identity = ReceptiveField()
    merged = merged_field([conv_path, identity])
    assert (merged.size, merged.jump, merged.start) == (5, 1, 0.5)   # the widest
    assert narrowest_field([conv_path, identity]) == identity
    # fields centred apart: a valid 3x3 (pixels 0..2, centre 1.5) and a padded 3x3 (pixels -1..1)
    valid = ReceptiveField().through(Window(3, 1, 0, 0))
    padded = ReceptiveField().through(Window(3, 1, 1, 1))
    union = merged_field([valid, padded])
    assert (union.size, union.start) == (4, 1.0)                      # pixels -1..2
    whole = ReceptiveField().covering(8)
    assert merged_field([whole, identity]).whole and not narrowest_field([whole, identity]).whole


# ----------------------------------------------------------------- rows that dilation skips (issue 13)

#: (H, W, K, S, P, D) where dilation (or a long stride) steps over input rows
SKIPPING = [(11, 11, 3, 4, 1, 2), (14, 14, 5, 2, 2, 2), (17, 14, 4, 4, 1, 2), (17, 18, 4, 3, 1, 2),
            (16, 11, 3, 4, 1, 2), (9, 19, 5, 3, 1, 2)]


def _random_geometries(count: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        h, w = (int(v) for v in rng.integers(1, 20, 2))
        k, s, p, d = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(0, 3)), int(rng.integers(1, 4))
        if min(h, w) + 2 * p >= d * (k - 1) + 1:
            cases.append((h, w, k, s, p, d))
    return cases


def _brute_force_unread(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Mark every padded position each tap of each window touches; count the input rows never marked."""
    padded = size + 2 * pad
    touched = set()
    origin = 0
    while origin + dilation * (kernel - 1) < padded:
        touched.update(origin + tap * dilation for tap in range(kernel))
        origin += stride
    return sum(1 for row in range(size) if row + pad not in touched)


@pytest.mark.parametrize("h, w, k, s, p, d", SKIPPING + _random_geometries(60))
def test_unread_rows_counts_every_row_no_tap_reads(h, w, k, s, p, d):
    for size in (h, w):
        assert unread_rows(size, Window(k, s, p, p, d)) == _brute_force_unread(size, k, s, p, d)


def test_the_issue_example_reads_only_odd_rows():
    # windows read rows (-1, 1, 3), (3, 5, 7), (7, 9, 11): 0, 2, 4, 6, 8 and 10 are never read
    assert unread_rows(11, Window(3, 4, 1, 1, 2)) == 6
    conv = Conv2d(1, 3, stride=4, padding=1, dilation=2)
    conv.build((11, 11, 1))
    assert conv.unread() == (6, 6)
    with pytest.raises(ConfigError, match=r"^conv: no window reads 6 of the 11 input rows along H: window o reads "
                                          r"rows o\*S - P \+ t\*D for taps t < K, and K=3, S=4, P=1, D=2 step "
                                          r"over them; change stride, dilation or padding \(or build with "
                                          r"strict=False to skip them as PyTorch does\)$"):
        Conv2d(1, 3, stride=4, padding=1, dilation=2, name="conv").build((11, 11, 1), strict=True)


@pytest.mark.parametrize("h, w, k, s, p, d", SKIPPING + _random_geometries(20, seed=1))
def test_unread_rows_are_where_torch_input_gradient_is_zero(h, w, k, s, p, d):
    torch = pytest.importorskip("torch")
    x = torch.ones((1, 1, h, w), dtype=torch.float64, requires_grad=True)
    weight = torch.ones((1, 1, k, k), dtype=torch.float64)
    torch.nn.functional.conv2d(x, weight, stride=s, padding=p, dilation=d).sum().backward()
    grad = x.grad[0, 0].numpy()
    conv = Conv2d(1, k, stride=s, padding=p, dilation=d)
    conv.build((h, w, 1))
    assert conv.unread() == (int((grad == 0).all(axis=1).sum()), int((grad == 0).all(axis=0).sum()))


@pytest.mark.parametrize("h, w, k, s, p, d", SKIPPING)
def test_unread_rows_are_where_cnnkit_input_gradient_is_zero(h, w, k, s, p, d):
    conv = Conv2d(1, k, stride=s, padding=p, dilation=d, use_bias=False)
    conv.build((h, w, 1))
    conv.parameters()["weight"].value = np.ones((k, k, 1, 1), np.float32)
    y = conv.forward(np.ones((1, h, w, 1), np.float32), training=True)
    grad = conv.backward(np.ones_like(y))[0, :, :, 0]
    assert conv.unread() == (int((grad == 0).all(axis=1).sum()), int((grad == 0).all(axis=0).sum()))


def test_the_field_recurrence_keeps_whole_numbers_and_rounds_fields_finer_than_a_pixel_up():
    field = ReceptiveField().through(Window(3, 2, 1, 1))
    assert (field.size, field.jump, field.start) == (3, 2, 0.5) and type(field.size) is type(field.jump) is int
    half = ReceptiveField(size=2, jump=Fraction(1, 2), start=0.25)
    after = half.through(Window(3, 1, 1, 1))
    assert (after.size, after.jump, after.start) == (3, Fraction(1, 2), 0.25)
    third = ReceptiveField(size=1, jump=Fraction(1, 3), start=1 / 6).through(Window(2, 1, 0, 0))
    assert third.size == 2 and third.jump == Fraction(1, 3)   # 1 + 1/3 pixels: 2 whole pixels at most
    assert ReceptiveField(jump=Fraction(1, 2)).through(Window(1, 2, 0, 0)).jump == 1


@pytest.mark.parametrize("size, kernel, stride, padding, output_padding, dilation, windows, out", [
    (5, 3, 2, 1, 1, 1, (3, 2, 1, 0, 1), 10),      # P=1, A=1: cropped 1 before, 0 after
    (5, 3, 2, 0, 1, 1, (3, 2, 0, 0, 1), 12),      # A beyond P: a row of zeros closes the output
    (5, 3, 2, "same", 0, 1, (3, 2, 0, 1, 1), 10),  # Keras's: the odd row cropped after
    (5, 4, 2, "same", 0, 1, (4, 2, 1, 1, 1), 10),
    (5, 1, 3, "same", 0, 1, (1, 3, 0, 0, 1), 15),
    (5, 1, 3, "valid", 0, 1, (1, 3, 0, 0, 1), 15),
    (5, 3, 1, "same", 0, 2, (3, 1, 2, 2, 2), 5),
])
def test_transposed_windows_are_the_convolution_they_transpose(size, kernel, stride, padding, output_padding,
                                                              dilation, windows, out):
    geometry, hw = transposed_windows((size, size), kernel, stride, padding, output_padding, dilation, "t")
    assert geometry[0] == geometry[1] == Window(*windows) and hw == (out, out)
    if not isinstance(padding, str):
        assert out == conv_transpose_output_size(size, kernel, stride, padding, output_padding, dilation)
