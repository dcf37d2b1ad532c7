"""The sampler: a documented, deterministic function a verifier can recompute.

Every token the engine emits is a pure function of four things::

    token = choose(raw fp32 logits z[V], params (T, top_k, top_p), seed, position)

so a verifier holding the same distribution reproduces each token, on any device,
without trusting the provider's random numbers. The function (spec ``hearth-gumbel-v1``):

1. **Greedy** (``T == 0`` or ``top_k == 1``): the first index of ``max z``.
2. Otherwise ``x = z / T`` (fp32, IEEE division).
3. **top-k** (``0 < K < V``): keep the tokens with ``x >= kth``, where ``kth`` is the
   K-th largest ``x`` (tokens tied with it are all kept).
4. **top-p** (``P < 1``): in the *canonical order* (``x`` descending, ties by token id
   ascending) and with ``p_j = exp(x_j − logsumexp(kept x))`` (the log-normaliser in
   fp32, the exponentials and their running sum in float64), token ``j``
   stays iff the mass strictly before it is ``<= P`` (the smallest head whose mass
   reaches ``P``; the top token always stays).
5. **Two-level Gumbel-max** over fixed groups of ``GROUP = 256`` consecutive token ids
   (group ``g`` holds ids ``[256·g, 256·g + 256)``)::

       L_g   = logsumexp_{kept j in g} x_j                 (fp32; -inf if none)
       g*    = argmax_g  L_g + G(seed, position, 2^32 + g)  (first g on a tie)
       token = argmax_{kept j in g*}  x_j + G(seed, position, j)   (first j on a tie)

   This is an exact sample of ``softmax(x)`` over the kept tokens: the maximum of the
   Gumbel-perturbed ``x`` over a group is itself Gumbel around ``L_g``, so the group is
   drawn in proportion to its mass and the token within it in proportion to its own.
   Only ``V/256 + 256`` noise values are needed per token, not ``V``.
   ``G`` is standard Gumbel noise from a counter-based hash (integer arithmetic
   modulo 2^64, bit-identical on every device)::

       mix(z)   = splitmix64's finaliser: z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
                  z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31
       key      = mix(seed + γ·(position + 1)),     γ = 0x9E3779B97F4A7C15
       h        = mix(key + γ·(n + 1))               n: token id, or 2^32 + group
       u        = (2·(h >> 41) + 1) / 2^24          exact, in (0, 1)
       G        = fp32(−ln(−ln u))                  computed in float64, then rounded

   ``position`` is the token's index in the completion (0 for the first token; resumed
   tokens count, so a job resumed on another provider continues the same stream).

Same logits, same token, on every device: the integers are exact; ``ln`` in float64 of
two libraries may differ in the last bit, which survives the rounding to fp32 with
probability below 2^-27 per value; ``L_g`` and the top-p normaliser are fp32 reductions
whose summation order differs between devices by a few ulp (~1e-6 nats). A token can
therefore differ only on a tie closer than that.

Why Gumbel-max: the noise of each (seed, position, token) is fixed in advance, so a
token changes between two honest machines only when their logits differ by more than
the margin between the winner's and the runner-up's perturbed scores (a *near-tie*,
which the verifier measures: :func:`explain`), and a provider that ignores the seed or
samples from another distribution picks other tokens at positions where the margin is
large.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "GROUP",
    "SAMPLER_ID",
    "Explained",
    "RowParams",
    "choose",
    "explain",
    "gumbel",
    "gumbel_reference",
    "row_keys",
]

SAMPLER_ID = "hearth-gumbel-v1"
GROUP = 256  # token ids per group of the two-level Gumbel-max
_GROUP_BASE = 1 << 32  # noise counter of group g: 2^32 + g (token ids are below 2^32)
_TOPP_BLOCKS = (64, 1024)  # top-p: sorted heads tried before a full sort

_M64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_NEG_INF = float("-inf")


def _signed(v: int) -> int:
    """The int64 with the same 64 bits as ``v mod 2^64`` (torch has no uint64 arithmetic)."""
    v &= _M64
    return v - (1 << 64) if v >> 63 else v


def _mix_int(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def _key(seed: int, position: int) -> int:
    return _mix_int(seed + _GAMMA * (position + 1))


def gumbel_reference(seed: int, position: int, n: int) -> float:
    """The spec in plain Python integers: ``G(seed, position, n)`` as an fp32 value."""
    h = _mix_int(_key(seed, position) + _GAMMA * (n + 1))
    u = (2 * (h >> 41) + 1) * 2.0**-24
    g = -math.log(-math.log(u))
    return float(torch.tensor(g, dtype=torch.float64).float())


def _lsr(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> n) & ((1 << (64 - n)) - 1)


_S_GAMMA, _S_C1, _S_C2 = _signed(_GAMMA), _signed(_C1), _signed(_C2)


def _mix(z: torch.Tensor) -> torch.Tensor:
    # int64 multiplication wraps modulo 2^64 on every torch backend: the same bits as
    # the unsigned arithmetic of the spec (checked against gumbel_reference in tests).
    z = (z ^ _lsr(z, 30)) * _S_C1
    z = (z ^ _lsr(z, 27)) * _S_C2
    return z ^ _lsr(z, 31)


def gumbel(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """fp32 noise ``G`` for ``counters`` ``[R, C]`` (int64: token ids, or 2^32 + group)
    under the row keys ``[R]`` of :func:`row_keys`.
    """
    h = _mix(keys[:, None] + (counters + 1) * _S_GAMMA)
    u = (_lsr(h, 41) * 2 + 1).double() * 2.0**-24
    return (-torch.log(-torch.log(u))).float()


@dataclass(frozen=True, slots=True)
class RowParams:
    """The sampling parameters of one row (one sequence at one position)."""

    temperature: float
    top_k: int
    top_p: float
    seed: int
    position: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def row_keys(rows: Sequence[RowParams], device: torch.device) -> torch.Tensor:
    """Per-row noise keys ``mix(seed + γ·(position + 1))`` as int64, for :func:`gumbel`."""
    return torch.tensor(
        [_signed(_key(r.seed, r.position)) for r in rows], dtype=torch.long, device=device
    )


def _canonical(vals: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort a ``topk`` block into the canonical order: value descending, id ascending."""
    by_id = ids.argsort(dim=1)
    vals, ids = vals.gather(1, by_id), ids.gather(1, by_id)
    vals, perm = vals.sort(dim=1, descending=True, stable=True)
    return vals, ids.gather(1, perm)


def _top_p(xk: torch.Tensor, top_p: torch.Tensor, first: int) -> torch.Tensor:
    """Step 4: the mask of tokens kept by top-p, given the top-k-masked ``xk`` ``[S, V]``.

    The kept set is a head of the canonical order, found in a sorted ``topk`` block of
    ``first`` (64, or the top-k), then 1,024 tokens, then the whole vocabulary: the
    first block whose head holds the kept set and ends before the block's last value
    (so no tie crosses its edge), or that holds every kept token.
    """
    s, v = xk.shape
    k = min(first, v)
    lse = torch.logsumexp(xk, dim=1, keepdim=True).double()
    rows = torch.arange(s, device=xk.device)
    while True:
        if k == v:  # a stable sort of the ids in order is the canonical order
            vals, ids = xk.sort(dim=1, descending=True, stable=True)
        else:
            vals, ids = _canonical(*xk.topk(k, dim=1))
        p = torch.exp(vals.double() - lse)
        head = p.cumsum(dim=1) - p
        n_kept = (head <= top_p[:, None]).sum(dim=1).clamp(min=1)
        last = n_kept - 1
        x_last, id_last = vals[rows, last], ids[rows, last]
        whole = vals[:, -1] == _NEG_INF  # every kept token is in the block
        enough = whole | ((x_last > vals[:, -1]) & (head[:, -1] + p[:, -1] > top_p))
        if k == v or bool(enough.all()):
            break
        # the next block: 1,024 tokens, or all of them when the head holds so little
        # of the mass that a nucleus within 1,024 tokens is unlikely (only speed)
        mass = float((head[:, -1] + p[:, -1]).min())
        k = v if k >= _TOPP_BLOCKS[1] or mass < 0.5 * float(top_p.max()) else _TOPP_BLOCKS[1]
    col = torch.arange(v, device=xk.device)[None, :]
    return (xk > x_last[:, None]) | ((xk == x_last[:, None]) & (col <= id_last[:, None]))


@dataclass(slots=True)
class _Draw:
    """Steps 2-5 for the non-greedy rows of a batch (see :func:`_draw`)."""

    x: torch.Tensor  # [S, V] fp32 temperature-scaled logits
    kept: torch.Tensor  # [S, V] bool: kept by top-k and top-p
    kth: torch.Tensor  # [S] top-k threshold (-inf: none)
    keys: torch.Tensor  # [S] int64 noise keys
    gscore: torch.Tensor  # [S, NG] fp32 group scores L_g + G (-inf: empty group)
    group: torch.Tensor  # [S] the chosen group g*
    score: torch.Tensor  # [S, GROUP] fp32 x + G within g* (-inf: not kept)
    token: torch.Tensor  # [S] the chosen token


def _draw(logits: torch.Tensor, rows: Sequence[RowParams]) -> _Draw:
    dev = logits.device
    s, v = logits.shape
    temp = torch.tensor([r.temperature for r in rows], dtype=torch.float32, device=dev)
    x = logits / temp[:, None]
    ks = [r.top_k if 0 < r.top_k < v else 0 for r in rows]
    kth = torch.full((s,), _NEG_INF, device=dev)
    if any(ks):
        kv = x.topk(max(ks), dim=1).values
        want = torch.tensor([max(k, 1) - 1 for k in ks], device=dev)
        has_k = torch.tensor([k > 0 for k in ks], device=dev)
        kth = torch.where(has_k, kv.gather(1, want[:, None])[:, 0], kth)
        kept = x >= kth[:, None]
    else:
        kept = torch.ones_like(x, dtype=torch.bool)
    xk = x.masked_fill(~kept, _NEG_INF) if any(ks) else x
    tp = [r.top_p for r in rows]
    if any(p < 1.0 for p in tp):
        top_p = torch.tensor(tp, dtype=torch.float64, device=dev)
        first = max(ks) + 1 if 0 < max(ks) < _TOPP_BLOCKS[1] else _TOPP_BLOCKS[0]
        kept &= _top_p(xk, top_p, first) | (top_p >= 1.0)[:, None]
        xk = x.masked_fill(~kept, _NEG_INF)
    ng = -(-v // GROUP)
    pad = ng * GROUP - v
    xg = torch.nn.functional.pad(xk, (0, pad), value=_NEG_INF).view(s, ng, GROUP)
    lg = torch.logsumexp(xg, dim=2)  # [S, NG]
    keys = row_keys(rows, dev)
    gids = torch.arange(ng, device=dev) + _GROUP_BASE
    gscore = lg + gumbel(keys, gids[None, :].expand(s, ng))
    group = gscore.argmax(dim=1)
    cand = xg[torch.arange(s, device=dev), group]  # [S, GROUP]
    ids = group[:, None] * GROUP + torch.arange(GROUP, device=dev)[None, :]
    score = cand + gumbel(keys, ids)
    token = group * GROUP + score.argmax(dim=1)
    return _Draw(x, kept, kth, keys, gscore, group, score, token)


def choose(logits: torch.Tensor, rows: Sequence[RowParams]) -> torch.Tensor:
    """The token of each row of raw fp32 ``logits`` ``[R, V]`` (int64 ``[R]``, same device).

    Greedy rows take the argmax; the others are one vectorised pass of the spec.
    """
    tokens = logits.argmax(dim=1)
    idx = [i for i, r in enumerate(rows) if not r.greedy]
    if not idx:
        return tokens
    sel = torch.tensor(idx, device=logits.device)
    tokens[sel] = _draw(logits.index_select(0, sel), [rows[i] for i in idx]).token
    return tokens


@dataclass(frozen=True, slots=True)
class Explained:
    """Why the sampler chose what it did at each row, against a claimed token.

    All per-row lists of plain Python numbers (what a verifier reports):

    * ``choice``: the token the sampler yields from these logits;
    * ``margin``: how far the claimed token is from winning, in raw logit nats
      (perturbed scores times ``T``, so comparable with logprob differences at every
      temperature): 0 when the claim is the choice; otherwise
      ``T · ((S_{g*} − S_h)⁺ + (best_h − score_c)⁺)``, where ``h`` is the claimed
      token's group, ``S`` the group scores (``L_h`` counting the claimed token even
      when a mask dropped it) and ``best_h`` the best perturbed score in ``h``.
      For greedy rows it is the raw logit gap ``z_top − z_claimed``;
    * ``outside_k``: how far (raw nats) the claimed token's logit is below the top-k
      threshold, 0 when kept by top-k;
    * ``outside_p``: how much the top-k-kept mass strictly before the claimed token (in
      the canonical order) exceeds ``top_p`` (probability), 0 when kept by top-p.
    """

    choice: list[int]
    margin: list[float]
    outside_k: list[float]
    outside_p: list[float]


def explain(logits: torch.Tensor, rows: Sequence[RowParams], claimed: Sequence[int]) -> Explained:
    """Re-run the sampler on ``logits`` ``[N, V]`` and measure each ``claimed`` token."""
    n, v = logits.shape
    dev = logits.device
    cl = torch.tensor(list(claimed), dtype=torch.long, device=dev)
    choice = logits.argmax(dim=1)
    margin = (logits.max(dim=1).values - logits.gather(1, cl[:, None])[:, 0]).double()
    outside_k = torch.zeros(n, dtype=torch.float64, device=dev)
    outside_p = torch.zeros(n, dtype=torch.float64, device=dev)
    idx = [i for i, r in enumerate(rows) if not r.greedy]
    if idx:
        sel = torch.tensor(idx, device=dev)
        sub = [rows[i] for i in idx]
        d = _draw(logits.index_select(0, sel), sub)
        s = len(sub)
        ar = torch.arange(s, device=dev)
        c = cl[sel]
        temp = torch.tensor([r.temperature for r in sub], dtype=torch.float64, device=dev)
        xc = d.x[ar, c]
        sc = (xc + gumbel(d.keys, c[:, None])[:, 0]).double()
        h = c // GROUP
        ng = d.gscore.shape[1]
        # the claimed token's group, counting the claimed token itself
        xh = torch.nn.functional.pad(d.x.masked_fill(~d.kept, _NEG_INF), (0, ng * GROUP - v))
        xh = xh.view(s, ng, GROUP)[ar, h].double()
        xh[ar, c % GROUP] = xc.double()
        gh = gumbel(d.keys, (h + _GROUP_BASE)[:, None])[:, 0].double()
        s_h = torch.logsumexp(xh, dim=1) + gh  # float64 here: a measure, not the draw
        best = d.gscore[ar, d.group].double()
        ids_h = h[:, None] * GROUP + torch.arange(GROUP, device=dev)[None, :]
        score_h = xh + gumbel(d.keys, ids_h).double()
        score_h[ar, c % GROUP] = _NEG_INF
        best_h = score_h.max(dim=1).values
        m = (best - s_h).clamp(min=0) + (best_h - sc).clamp(min=0)
        margin[sel] = torch.where(c == d.token, 0.0, m * temp)
        choice[sel] = d.token
        outside_k[sel] = ((d.kth - xc).clamp(min=0) * temp.float()).double()
        # top-k-kept mass strictly before the claimed token in the canonical order
        xcol = d.x
        col = torch.arange(v, device=dev)[None, :]
        ahead = (xcol > xc[:, None]) | ((xcol == xc[:, None]) & (col < c[:, None]))
        ahead &= xcol >= d.kth[:, None]
        xk = xcol.masked_fill(xcol < d.kth[:, None], _NEG_INF)
        lse_k = torch.logsumexp(xk, dim=1, keepdim=True).double()
        mass = torch.where(ahead, torch.exp(xcol.double() - lse_k), 0.0).sum(dim=1)
        tp = torch.tensor([r.top_p for r in sub], dtype=torch.float64, device=dev)
        outside_p[sel] = torch.where(tp < 1.0, (mass - tp).clamp(min=0), 0.0)
    return Explained(
        choice=[int(t) for t in choice.tolist()],
        margin=[float(x) for x in margin.tolist()],
        outside_k=[float(x) for x in outside_k.tolist()],
        outside_p=[float(x) for x in outside_p.tolist()],
    )
