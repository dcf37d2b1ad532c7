"""The sampler (p2pnode/serving/sampler.py): the spec, its exactness and its determinism."""

from __future__ import annotations

import math
import random

import pytest
import torch

from market.protocol import verify
from p2pnode.serving import sampler as S
from p2pnode.serving.sampler import RowParams


def test_sampler_id_is_the_rules() -> None:
    assert S.SAMPLER_ID == verify.SAMPLER_ID


@pytest.mark.parametrize("seed", [0, 1, 7, 2**63 - 1, 2**63 + 5, 2**64 - 1])
def test_noise_is_the_integer_spec(seed: int) -> None:
    """The int64 torch hash equals the plain-integer spec, token ids and group counters."""
    rng = random.Random(seed)
    counters = [
        0,
        1,
        255,
        256,
        49151,
        2**32,
        2**32 + 191,
        *(rng.randrange(2**20) for _ in range(8)),
    ]
    for position in (0, 1, 127, 10_000):
        keys = S.row_keys([RowParams(1.0, 0, 1.0, seed, position)], torch.device("cpu"))
        got = S.gumbel(keys, torch.tensor([counters]))[0].tolist()
        want = [S.gumbel_reference(seed, position, n) for n in counters]
        assert got == want


def test_noise_is_standard_gumbel() -> None:
    keys = S.row_keys([RowParams(1.0, 0, 1.0, 3, 0)], torch.device("cpu"))
    g = S.gumbel(keys, torch.arange(200_000)[None, :])[0].double()
    assert float(g.mean()) == pytest.approx(0.5772, abs=0.01)  # Euler-Mascheroni
    assert float(g.var()) == pytest.approx(math.pi**2 / 6, rel=0.02)


def _logits(v: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(v, generator=gen) * 2.0


def _expected(z: torch.Tensor, t: float, k: int, p: float) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p, written independently."""
    x = z / t
    if k:
        x = x.masked_fill(x < x.topk(k).values[-1], -math.inf)
    if p < 1.0:
        sx, order = x.sort(descending=True, stable=True)
        pr = torch.softmax(sx.double(), -1)
        drop = pr.cumsum(-1) - pr > p
        x = x.scatter(0, order, sx.masked_fill(drop, -math.inf))
    return torch.softmax(x.double(), -1)


@pytest.mark.parametrize(
    ("t", "k", "p"), [(1.0, 0, 1.0), (0.7, 0, 0.8), (1.3, 40, 1.0), (0.9, 50, 0.9)]
)
def test_draws_follow_the_distribution(t: float, k: int, p: float) -> None:
    """Over many seeds, the frequencies are softmax's (several groups, a partial one)."""
    v, n = 700, 20_000
    z = _logits(v)
    want = _expected(z, t, k, p)
    rows = [RowParams(t, k, p, seed, 3) for seed in range(n)]
    got = torch.bincount(S.choose(z.expand(n, v).contiguous(), rows), minlength=v).double() / n
    assert float(got[want == 0].sum()) == 0.0  # masked tokens never drawn
    sd = (want * (1 - want) / n).sqrt()
    assert float(((got - want).abs() - 5 * sd).max()) < 1e-3
    # Pearson's chi-square over the tokens expected >= 5 times (the rest pooled): about
    # its degrees of freedom for a true sample, far above for a biased one
    exp, obs = want * n, got * n
    big = exp >= 5
    cells_e = torch.cat([exp[big], exp[~big].sum()[None]])
    cells_o = torch.cat([obs[big], obs[~big].sum()[None]])
    chi2 = float(((cells_o - cells_e) ** 2 / cells_e.clamp(min=1e-9)).sum())
    df = int(big.sum())
    assert chi2 < df + 5 * math.sqrt(2 * df)


def test_a_token_depends_only_on_its_own_row() -> None:
    """Same logits, parameters, seed and position: same token, whatever else is batched."""
    v = 49152
    rows = [
        RowParams(0.8, 0, 1.0, 11, 0),
        RowParams(1.0, 50, 0.9, 12, 5),
        RowParams(0.0, 0, 1.0, 0, 2),
        RowParams(0.6, 0, 0.95, 2**64 - 1, 9),
        RowParams(1.2, 1000, 1.0, 5, 1),
    ]
    logits = torch.stack([_logits(v, i) for i in range(len(rows))])
    together = S.choose(logits, rows).tolist()
    alone = [int(S.choose(logits[i : i + 1], [r])[0]) for i, r in enumerate(rows)]
    order = [3, 0, 4, 2, 1]
    shuffled = S.choose(logits[order], [rows[i] for i in order]).tolist()
    assert together == alone == [together[i] for i in range(len(rows))]
    assert shuffled == [together[i] for i in order]
    assert together[2] == int(logits[2].argmax())
    other = S.choose(
        logits, [RowParams(r.temperature, r.top_k, r.top_p, r.seed + 1, r.position) for r in rows]
    )
    assert other.tolist() != together  # the seed matters


def test_ties_resolve_by_token_id() -> None:
    """Exact ties (common in bf16 logits) keep the canonical order: the lower id first."""
    z = torch.zeros(1, 600)
    z[0, [10, 300, 500]] = 5.0
    # top_p so small that only the first of the tied tokens survives
    picks = {int(S.choose(z, [RowParams(1.0, 0, 0.01, s, 0)])[0]) for s in range(50)}
    assert picks == {10}
    # top-k 2 keeps every token tied with the 2nd largest value
    picks = {int(S.choose(z, [RowParams(1.0, 2, 1.0, s, 0)])[0]) for s in range(300)}
    assert picks == {10, 300, 500}


def test_explain_measures_the_claim() -> None:
    v = 49152
    z = torch.stack([_logits(v, 5)] * 4)
    rows = [RowParams(0.8, 50, 1.0, 21, i) for i in range(4)]
    chosen = S.choose(z, rows).tolist()
    top = z[0].topk(60)
    outsider = int(top.indices[55])  # below the top-50 edge
    claimed = [
        chosen[0],
        int(top.indices[1]) if chosen[1] != int(top.indices[1]) else int(top.indices[2]),
        outsider,
        chosen[3],
    ]
    ex = S.explain(z, rows, claimed)
    assert ex.choice == chosen
    assert ex.margin[0] == 0.0 and ex.margin[3] == 0.0
    assert ex.margin[1] > 0.0 and ex.outside_k[1] == 0.0
    kth = float(top.values[49])
    assert ex.outside_k[2] == pytest.approx(kth - float(top.values[55]), abs=1e-5)
    greedy = S.explain(z[:1], [RowParams(0.0, 0, 1.0, 0, 0)], [int(top.indices[3])])
    assert greedy.choice == [int(top.indices[0])]
    assert greedy.margin[0] == pytest.approx(float(top.values[0] - top.values[3]), rel=1e-6)


def test_explain_top_p_distance() -> None:
    z = torch.full((1, 512), -20.0)
    z[0, :4] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    p = torch.softmax(z[0].double(), -1)
    # top_p 0.6: kept {0} (its mass 0.64 reaches 0.6); token 2 has 0.64 + 0.24 before it
    ex = S.explain(z, [RowParams(1.0, 0, 0.6, 1, 0)], [2])
    assert ex.choice == [0]
    assert ex.outside_p[0] == pytest.approx(float(p[0] + p[1]) - 0.6, abs=1e-6)
