"""The order `make test` runs the suite in (tests/conftest.py's ``longest_first``): a permutation of the collection
cut into xdist's blocks, each block starting with its share of the slow tests, longest first."""

from __future__ import annotations

import pytest

from tests.conftest import expected_seconds, longest_first


class Item:
    """What ``longest_first`` reads of a pytest item: its name and its `slow` mark."""

    def __init__(self, name: str, seconds: float | None = None):
        self.name = name
        self.mark = None if seconds is None else pytest.mark.slow(seconds=seconds).mark

    def get_closest_marker(self, name):
        return self.mark if name == "slow" else None

    def __repr__(self):
        return self.name


def test_slow_tests_lead_each_workers_block_longest_first_and_short_ones_keep_their_order():
    items = [Item(f"fast{i}") for i in range(7)]
    items[2:2] = [Item("slow60", 60), Item("slow150", 150)]
    items.append(Item("slow30", 30))
    laid_out = longest_first(items, 2)
    assert sorted(map(repr, laid_out)) == sorted(map(repr, items))  # nothing lost or doubled
    first, second = laid_out[:5], laid_out[5:]  # xdist's split of 10 items over 2 workers: 5 and 5
    assert [repr(i) for i in first[:1]] == ["slow150"] and [repr(i) for i in second[:2]] == ["slow60", "slow30"]
    fast = [repr(i) for i in laid_out if not expected_seconds(i)]
    assert fast == [f"fast{i}" for i in range(7)]


@pytest.mark.parametrize("workers", [1, 3])
def test_any_worker_count_keeps_every_item_and_puts_slow_first(workers):
    items = [Item("a"), Item("s", 60), Item("b"), Item("t", 90)]
    laid_out = longest_first(items, workers)
    assert sorted(map(repr, laid_out)) == ["a", "b", "s", "t"]
    if workers == 1:
        assert [repr(i) for i in laid_out] == ["t", "s", "a", "b"]
    else:  # xdist's split of 4 over 3 workers is 1, 1, 2: each slow test leads a block of its own
        assert [repr(i) for i in laid_out] == ["t", "s", "a", "b"] and laid_out[0] is items[3]
