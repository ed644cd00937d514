"""How work is cut into parts for the worker pool (:mod:`cnnkit.ops.threads`).

The cuts depend only on the sizes and the number of parts, never on timing, and callers add
partial results in part order, so a result is the same from run to run. Two cuts:

- :func:`share`: consecutive, nearly equal ranges (images of a batch, rows of a product, the
  36 Winograd positions); :func:`in_ranges` runs a task on each range over the pool;
- :func:`deal`: every ``parts``-th item, as cards are dealt (Winograd blocks, whose cost
  varies along the image, so that each worker gets some of each).
"""

from __future__ import annotations

from .threads import num_threads, run_parallel


def part_count(items: int, workers: int | None = None) -> int:
    """Parts for ``items`` pieces of work: one per worker (default: the pool's size), no more
    than there are pieces, and at least one."""
    return max(1, min(num_threads() if workers is None else workers, items))


def share(total: int, part: int, parts: int) -> tuple[int, int]:
    """``(lo, hi)``: the ``part``-th of ``parts`` nearly equal consecutive ranges of ``range(total)``."""
    return total * part // parts, total * (part + 1) // parts


def deal(items: list, part: int, parts: int) -> list:
    """The items that the ``part``-th of ``parts`` takes when they are dealt round-robin."""
    return items[part::parts]


def in_ranges(task, total: int, parts: int) -> list:
    """``[task(lo, hi) for each range of share(total, part, parts)]``, on the worker pool when
    ``parts > 1``; each task must touch disjoint output (or return its own partial result)."""
    return run_parallel(lambda part: task(*share(total, part, parts)), parts)
