"""Cutting work into parts: fixed cuts that cover the work once, whatever the timing."""

import pytest

from cnnkit.ops.parts import deal, in_ranges, part_count, share


@pytest.mark.parametrize("total, parts", [(10, 3), (3, 4), (36, 2), (1, 1), (0, 2), (257, 7)])
def test_shares_are_consecutive_nearly_equal_and_cover_the_range_once(total, parts):
    ranges = [share(total, part, parts) for part in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(hi == lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_dealt_items_go_round_robin_and_each_goes_once():
    items = list(range(11))
    hands = [deal(items, part, 3) for part in range(3)]
    assert hands == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]


def test_part_count_is_one_per_worker_but_never_more_than_the_work(monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "4")
    assert part_count(10) == 4 and part_count(3) == 3 and part_count(0) == 1
    assert part_count(10, workers=2) == 2


@pytest.mark.parametrize("threads", ["1", "2"])
def test_in_ranges_returns_each_range_result_in_part_order(threads, monkeypatch):
    monkeypatch.setenv("CNNKIT_NUM_THREADS", threads)
    assert in_ranges(lambda lo, hi: list(range(lo, hi)), 7, 3) == [[0, 1], [2, 3], [4, 5, 6]]
