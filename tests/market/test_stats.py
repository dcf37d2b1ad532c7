"""The one percentile definition: linear interpolation, as numpy's default."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from market.sim.report import SimReport
from market.stats import percentile


@pytest.mark.parametrize(
    "values, q, expected",
    [
        ([7.0], 0.95, 7.0),
        ([1, 2, 3, 4], 0.0, 1.0),
        ([1, 2, 3, 4], 1.0, 4.0),
        ([1, 2, 3, 4], 0.5, 2.5),  # between the two middle values, not one of them
        ([4, 1, 3, 2], 0.5, 2.5),  # order of the input does not matter
        (list(range(1, 21)), 0.95, 19.05),  # 5 % of the way from the 19th to the 20th
        (list(range(1, 101)), 0.95, 95.05),
        ([10, 10, 10, 1000], 0.5, 10.0),
    ],
)
def test_worked_examples(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_agrees_with_numpy_default_and_statistics_inclusive() -> None:
    rng = random.Random(14)
    for n in (1, 2, 3, 5, 20, 32, 199, 1000):
        xs = [rng.expovariate(1 / 150) for _ in range(n)]  # latencies, long-tailed
        for q in (0.0, 0.05, 0.5, 0.9, 0.95, 0.99, 1.0):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, 100 * q)))
        if n >= 2:
            cuts = statistics.quantiles(xs, n=20, method="inclusive")  # 5 %, 10 %, …, 95 %
            assert percentile(xs, 0.95) == pytest.approx(cuts[-1])
            assert percentile(xs, 0.5) == pytest.approx(statistics.median(xs))


def test_edges() -> None:
    assert math.isnan(percentile([], 0.95))
    assert percentile(iter([3, 1, 2]), 0.5) == 2.0  # any iterable
    assert percentile([1.0, math.inf], 1.0) == math.inf
    for q in (-0.01, 1.01, 95):
        with pytest.raises(ValueError, match="within"):
            percentile([1.0], q)
    with pytest.raises(ValueError, match="NaN"):
        percentile([1.0, math.nan], 0.5)


def test_the_simulator_reports_through_it() -> None:
    award_s = [i / 1000 for i in range(1, 21)]
    assert SimReport._pct(award_s, 0.95) == pytest.approx(0.01905)
    assert SimReport._pct([], 0.95) == 0.0  # a run that awarded nothing still prints 0
