"""The percentile for every reported p50/p95: one definition, stated once.

:func:`percentile` is **linear interpolation between closest ranks**: the definition
numpy's ``percentile``/``quantile`` use by default (``method="linear"``, Hyndman & Fan
type 7), and ``statistics.quantiles(..., method="inclusive")``. For ``n`` sorted
values ``x[0] ≤ … ≤ x[n-1]``, the ``q``-quantile sits at position ``h = q·(n − 1)``:

    percentile(xs, q) = x[⌊h⌋] + (h − ⌊h⌋) · (x[⌊h⌋ + 1] − x[⌊h⌋])

so ``q = 0`` is the minimum, ``q = 1`` the maximum, ``q = 0.5`` the median, and a p95
of 20 samples lies 5 % of the way from the 19th value towards the 20th.

The simulator (``hearth sim``) and ``hearth bench market`` report their percentiles
through it; ``hearth bench serving`` and ``hearth bench net`` have their own helpers
still (whitepaper §9 says how they differ). It imports nothing from the project, so
any layer may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-quantile (``0 ≤ q ≤ 1``; 0.95 for a p95) of ``values``, interpolated.

    Returns NaN for no values; raises :class:`ValueError` for ``q`` outside [0, 1] or a
    NaN among the values (an ordering of NaNs means nothing).

    >>> percentile([1, 2, 3, 4], 0.5)
    2.5
    >>> percentile(range(1, 21), 0.95)
    19.05
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within [0, 1], got {q!r}")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return math.nan
    if any(map(math.isnan, ordered)):
        raise ValueError("cannot take a percentile of NaN")
    h = q * (len(ordered) - 1)
    lo = math.floor(h)
    if lo == h:  # on a sample (this also keeps infinities out of the arithmetic)
        return ordered[lo]
    return ordered[lo] + (h - lo) * (ordered[lo + 1] - ordered[lo])
