"""benchmarks/paired_timing.py: randomized rounds and the order-statistic median interval."""
import random

import paired_timing as pt
import pytest
import torch


def test_coverage_of_order_statistic_intervals():
    assert pt.coverage(5, 1) == pytest.approx(1 - 2 / 32)          # (min, max) of 5: 93.75 %
    assert pt.coverage(6, 1) == pytest.approx(1 - 2 / 64)          # (min, max) of 6: 96.9 %
    assert pt.coverage(9, 2) == pytest.approx(1 - 2 * 10 / 512)    # 2nd and 8th of 9: 96.1 %
    assert [pt.order_index(n) for n in (1, 5, 6, 8, 9, 11, 12, 15)] == [1, 1, 1, 1, 2, 2, 3, 4]
    assert [pt.rounds_to_narrow(n) for n in (1, 5, 6, 8, 9, 12)] == [6, 6, 9, 9, 12, 15]


def test_median_interval():
    iv = pt.median_interval([5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 7.0, 8.0, 6.0])
    assert (iv.median, iv.low, iv.high, iv.n) == (5.0, 2.0, 8.0, 9)
    assert iv.coverage == pytest.approx(pt.coverage(9, 2))
    assert iv.rel_width == pytest.approx(6 / 5) and not iv.readable(1.0)
    assert pt.median_interval([2.0] * 6).readable(0.2)
    assert not pt.median_interval([2.0] * 5).readable(0.2)        # below 95 %
    one = pt.median_interval([3.0])
    assert (one.low, one.high, one.coverage) == (3.0, 3.0, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        pt.median_interval([])
    with pytest.raises(ValueError, match="level must be in"):
        pt.median_interval([1.0], level=1.5)


def test_the_interval_covers_the_median_at_its_level():
    """Exp(1) samples of 9 (median ln 2): the interval holds it as often as coverage(9, 2)."""
    rng = random.Random(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        iv = pt.median_interval([rng.expovariate(1.0) for _ in range(9)])
        covered += iv.low <= 0.6931471805599453 <= iv.high
    assert covered / trials == pytest.approx(pt.coverage(9, 2), abs=0.02)


def test_time_round_calls_each_once_in_a_drawn_order():
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "abcd"}
    rng = random.Random(1)
    orders = set()
    for _ in range(8):
        order.clear()
        times = pt.time_round(fns, torch.device("cpu"), rng)
        assert sorted(order) == list("abcd") and set(times) == set("abcd")
        assert all(t >= 0 for t in times.values())
        orders.add(tuple(order))
    assert len(orders) > 1


def test_ratios_use_rounds_that_timed_both():
    rounds = [{"cfg": 2.0, "a": 1.0}, {"cfg": 3.0}, {"cfg": 4.0, "a": 2.0, "b": 1.0}]
    assert pt.ratios(rounds, "cfg", "a") == [2.0, 2.0]
    assert pt.ratios(rounds, "cfg", "b") == [4.0]
