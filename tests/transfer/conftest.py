"""A network pretrained on the digits 0-4, shared by the transfer tests (trained once, a few seconds)."""

import pytest

from cnnkit.experiments import digit_halves, pretrained_digits_net


@pytest.fixture(scope="session")
def pretrained():
    return pretrained_digits_net(seed=0)


@pytest.fixture(scope="session")
def halves():
    """((0-4 train, 5-9 train), (0-4 test, 5-9 test))."""
    return digit_halves("train"), digit_halves("test")
