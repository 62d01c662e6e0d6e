"""Paired timing in randomized rounds, and a distribution-free interval for a median.

A round times each of several callables once (common.time_fn: CUDA events, or wall clock on
CPU), in an order drawn afresh for every round, so the calls compared within a round are close
in time and none is always first. Ratios taken per round (e.g. t_CFG / t_SG) then cancel load
drifts slower than a round; their median is the estimate.

Interval for the median (order statistics, no assumption on the distribution): for n
independent per-round values sorted v_(1) ≤ … ≤ v_(n), the number of values below the
population median is Bin(n, ½), so

    P(v_(j) ≤ median ≤ v_(n+1−j)) = 1 − 2·P(Bin(n, ½) ≤ j − 1) =: coverage(j).

`median_interval` takes the largest j whose coverage is ≥ `level` (the narrowest such interval);
when even j = 1, (min, max), falls short (n ≤ 5 at 95 %: coverage 1 − 2^(1−n)) it returns
(min, max) with its lower coverage, which callers report.
"""
from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

import common
import torch

LEVEL = 0.95  # the confidence level of the intervals the benchmarks report


def time_round(fns: dict, device: torch.device, rng: random.Random) -> dict:
    """{name: seconds of one call of fns[name]}, the calls made in an order drawn from `rng`."""
    names = list(fns)
    rng.shuffle(names)
    return {name: common.time_fn(fns[name], device, warmup=0, repeats=1).times[0]
            for name in names}


def ratios(rounds: list[dict], num, den) -> list[float]:
    """rounds[k][num] / rounds[k][den] over the rounds that timed both."""
    return [r[num] / r[den] for r in rounds if num in r and den in r]


@dataclass(frozen=True)
class Interval:
    """The median of n values and its order-statistic interval [low, high] of `coverage`."""

    median: float
    low: float
    high: float
    coverage: float
    n: int

    @property
    def rel_width(self) -> float:
        """(high − low) / median: 0.2 is about ± 10 %."""
        return (self.high - self.low) / self.median if self.median > 0 else math.inf

    def readable(self, max_rel_width: float, level: float = LEVEL) -> bool:
        """At the confidence level and no wider than max_rel_width."""
        return self.coverage >= level and self.rel_width <= max_rel_width


def coverage(n: int, j: int) -> float:
    """1 − 2·P(Bin(n, ½) ≤ j − 1): the chance that [v_(j), v_(n+1−j)] holds the median."""
    below = sum(math.comb(n, i) for i in range(j)) / 2 ** n
    return 1.0 - 2.0 * below


def order_index(n: int, level: float = LEVEL) -> int:
    """The largest j ≤ (n + 1) / 2 with coverage(n, j) ≥ level, or 1 when there is none."""
    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(n, j + 1) >= level:
        j += 1
    return j


def rounds_to_narrow(n: int, level: float = LEVEL) -> int:
    """The fewest values m > n that can give a narrower interval: the first m with an interval
    at the level when n has none (6 at 95 %), else the first m with order_index(m) >
    order_index(n) (6 -> 9 -> 12 -> 15 at 95 %; between them an interval can only widen)."""
    m = n + 1
    if coverage(n, 1) < level:
        while coverage(m, 1) < level:
            m += 1
        return m
    j = order_index(n, level)
    while order_index(m, level) == j:
        m += 1
    return m


def median_interval(values, level: float = LEVEL) -> Interval:
    """Median of `values` with its distribution-free interval (module docstring)."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        raise ValueError("median_interval needs at least one value, got none")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    j = order_index(n, level)
    return Interval(statistics.median(v), v[j - 1], v[n - j], coverage(n, j), n)
