"""The verification rule: is a provider's completion what the model it named produces?

Sans-IO and torch-free: the verifier's engine re-scores the completion (one
teacher-forced pass, :meth:`p2pnode.serving.engine.Engine.rescore`) and hands the
plain numbers here as a :class:`Rescore`; :func:`judge` compares them with the
provider's :class:`Claim` under calibrated :class:`Tolerances` and returns a
:class:`Verdict`, token by token. Signatures and the hash chain are checked where the
evidence is kept (:mod:`market.protocol.commitment`); this module judges the numbers.

The rule, per completion token ``i`` (``lp`` = raw log-softmax of the model's logits,
before temperature or masks; the verifier's own values are the reference):

1. **Logprob.** ``|claimed_lp − verifier_lp| <= logprob``. A quantised or different
   model moves the logprobs of its tokens (int8 of SmolLM2: up to 7.3 nats; a swapped
   token: 31.7), fabricated logprobs are caught here, honest fp32 vs bf16 stays within
   0.23. Over the whole job the *mean* difference must stay within ``logprob_mean``:
   a substitute that is close at every token is still consistently off.
2. **Sampler.** The token is the one the sampler (spec ``hearth-gumbel-v1``,
   :mod:`p2pnode.serving.sampler`) yields from the verifier's logits with the job's
   seed. Honest machines disagree only on near-ties, so a different token passes when
   its ``margin`` (how far, in raw nats, it was from winning) is at most
   ``tie_margin`` and it sits at most ``boundary_k`` nats below the top-k threshold and
   ``boundary_p`` of mass past the top-p edge. A provider that ignored the seed, or
   sampled from another distribution, picks tokens with large margins.
3. **Greedy.** With temperature 0 no token may be more than ``greedy_gap`` nats below
   the verifier's top choice. This catches *cheap-then-prove*: a cheap model chooses
   the tokens and the real model fills in their logprobs, which then pass rule 1.
4. **Near-ties are rare.** At most ``near_tie_rate`` of a job's tokens (rounded up) may
   be accepted as near-ties: a substitute close enough to pass each token alone still
   diverges too often.

Tolerances are measured, not guessed: ``hearth verify calibrate`` runs honest
variations (fp32 and bf16, thread counts, batch mixes, the attention kernel vs torch)
and writes the largest difference seen of each kind times a safety factor, per model
content address and dtype, as JSON that :meth:`ToleranceTable.from_json` reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = [
    "SAMPLER_ID",
    "TOLERANCES_FORMAT",
    "Claim",
    "JobReason",
    "Params",
    "Rescore",
    "TokenReason",
    "TokenVerdict",
    "ToleranceTable",
    "Tolerances",
    "Verdict",
    "judge",
    "tolerate",
]

SAMPLER_ID = "hearth-gumbel-v1"  # == p2pnode.serving.sampler.SAMPLER_ID (a test checks)
TOLERANCES_FORMAT = "hearth-tolerances-v1"

TokenReason = Literal[
    "ok",  # the verifier's own choice, logprob within tolerance
    "near_tie",  # another token than the verifier's, within the measured near-tie margins
    "malformed",  # claimed logprob not finite or above 0
    "logprob",  # claimed logprob too far from the verifier's
    "greedy_gap",  # greedy job: token too far below the verifier's top choice
    "not_sampled",  # seeded job: the sampler would not yield this token (margin too big)
    "outside_top_k",  # seeded job: token too far outside the verifier's top-k
    "outside_top_p",  # seeded job: token too far outside the verifier's nucleus
]
JobReason = Literal[
    "ok",
    "mismatch",  # claim and rescore do not describe the same tokens, model or sampler
    "token",  # some token failed (the first failing token's reason is in ``tokens``)
    "logprob_mean",  # every token passed, but the mean logprob difference is too big
    "near_ties",  # every token passed, but too many only as near-ties
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    """The job's sampling parameters (``seed`` None only for greedy jobs)."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """What the provider delivered and signed: its tokens and their raw logprobs.

    ``token_ids`` is the whole completion (tokens resumed from an earlier provider
    included: positions count from the first completion token).
    """

    model_id: str
    params: Params
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    sampler: str = SAMPLER_ID


@dataclass(frozen=True, slots=True, kw_only=True)
class Rescore:
    """The verifier's teacher-forced pass over the claimed tokens, as plain numbers.

    Per completion position ``i`` (the fields of
    :class:`p2pnode.serving.engine.Rescore`, which converts with ``asdict``):
    ``logprobs[i]`` the raw logprob of ``token_ids[i]``; ``top_ids[i]`` /
    ``top_logprobs[i]`` the verifier's top-n; ``choice[i]`` the sampler's token from
    the verifier's logits with the job's seed; ``margin[i]`` how far the claimed token
    was from winning in raw nats (0 when it is the choice; for greedy, the logit gap
    below the top); ``outside_k[i]`` (nats) and ``outside_p[i]`` (mass) how far the
    claimed token lies outside the verifier's top-k and top-p sets (0 when inside).
    """

    model_id: str
    dtype: str
    sampler: str
    prompt_tokens: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top_ids: tuple[tuple[int, ...], ...]
    top_logprobs: tuple[tuple[float, ...], ...]
    choice: tuple[int, ...]
    margin: tuple[float, ...]
    outside_k: tuple[float, ...]
    outside_p: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tolerances:
    """How far honest machines may differ for one model (content address) and dtype.

    ``dtype`` names the coarsest precision these tolerances admit on either side
    (``"float32"``: both ran fp32; ``"bfloat16"``: one side may have run bf16, the
    default on GPUs). Each bound is the largest difference measured between honest
    set-ups, times the calibration's safety factor:

    * ``logprob``: per token, ``|claimed_lp − verifier_lp|`` (nats);
    * ``logprob_mean``: per job, the mean of those differences (nats);
    * ``greedy_gap``: greedy jobs, the verifier's top-1 logprob minus the claimed
      token's (nats): 0 unless the two machines disagree on the argmax;
    * ``tie_margin``: seeded jobs, the sampler margin (raw nats) of a claimed token
      that is not the verifier's choice;
    * ``boundary_k`` / ``boundary_p``: seeded jobs, how far (nats / probability mass)
      a claimed token may sit outside the verifier's top-k / top-p set;
    * ``near_tie_rate``: the share of a job's tokens that may be near-ties (tokens
      other than the verifier's choice, accepted by the margins above); the allowance
      is ``ceil(near_tie_rate · n)``.
    """

    model_id: str
    dtype: str
    logprob: float
    logprob_mean: float
    greedy_gap: float
    tie_margin: float
    boundary_k: float
    boundary_p: float
    near_tie_rate: float

    def allowed_near_ties(self, n: int) -> int:
        return math.ceil(self.near_tie_rate * n)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenVerdict:
    """One completion position, judged."""

    position: int
    token_id: int
    claimed_logprob: float
    verifier_logprob: float
    choice: int  # the verifier's own token there
    margin: float
    reason: TokenReason

    @property
    def ok(self) -> bool:
        return self.reason in ("ok", "near_tie")


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The judgement of one job: ``ok`` and why, with every token's verdict."""

    ok: bool
    reason: JobReason
    detail: str
    tokens: tuple[TokenVerdict, ...]
    max_logprob_diff: float
    mean_logprob_diff: float
    near_ties: int

    @property
    def failed(self) -> tuple[TokenVerdict, ...]:
        return tuple(t for t in self.tokens if not t.ok)


def _mismatch(detail: str) -> Verdict:
    return Verdict(
        ok=False,
        reason="mismatch",
        detail=detail,
        tokens=(),
        max_logprob_diff=math.inf,
        mean_logprob_diff=math.inf,
        near_ties=0,
    )


def _token_reason(
    claim: Claim, r: Rescore, tol: Tolerances, i: int, diff: float, claimed: float
) -> TokenReason:
    if not math.isfinite(claimed) or claimed > 0.0:
        return "malformed"
    if diff > tol.logprob:
        return "logprob"
    token, choice = claim.token_ids[i], r.choice[i]
    if claim.params.greedy:
        if r.margin[i] > tol.greedy_gap:
            return "greedy_gap"
        return "ok" if token == choice else "near_tie"
    if token == choice:
        return "ok"
    if r.outside_k[i] > tol.boundary_k:
        return "outside_top_k"
    if r.outside_p[i] > tol.boundary_p:
        return "outside_top_p"
    if r.margin[i] > tol.tie_margin:
        return "not_sampled"
    return "near_tie"


def judge(claim: Claim, rescore: Rescore, tol: Tolerances) -> Verdict:
    """Apply the rule (see the module docstring) to one job."""
    n = len(claim.token_ids)
    r = rescore
    if claim.model_id != r.model_id or claim.model_id != tol.model_id:
        return _mismatch(f"models differ: claim {claim.model_id}, verifier {r.model_id}")
    if claim.sampler != r.sampler:
        return _mismatch(f"samplers differ: claim {claim.sampler}, verifier {r.sampler}")
    if claim.token_ids != r.token_ids:
        return _mismatch("the verifier scored other tokens than the claim's")
    lens = {len(claim.logprobs), len(r.logprobs), len(r.choice), len(r.margin)}
    lens |= {len(r.outside_k), len(r.outside_p)}
    if n == 0 or lens != {n}:
        return _mismatch(f"lengths differ or are empty: {n} tokens, {sorted(lens)}")
    if not claim.params.greedy and claim.params.seed is None:
        return _mismatch("a sampled job without a seed cannot be verified")
    tokens = []
    diffs = []
    for i in range(n):
        claimed, mine = claim.logprobs[i], r.logprobs[i]
        diff = abs(claimed - mine) if math.isfinite(claimed) else math.inf
        diffs.append(diff)
        tokens.append(
            TokenVerdict(
                position=i,
                token_id=claim.token_ids[i],
                claimed_logprob=claimed,
                verifier_logprob=mine,
                choice=r.choice[i],
                margin=r.margin[i],
                reason=_token_reason(claim, r, tol, i, diff, claimed),
            )
        )
    ties = sum(t.reason == "near_tie" for t in tokens)
    worst, mean = max(diffs), sum(diffs) / n
    bad = [t for t in tokens if not t.ok]
    reason: JobReason = "ok"
    detail = f"{n} tokens agree (max |Δlp| {worst:.3g}, mean {mean:.3g}, near-ties {ties})"
    if bad:
        reason = "token"
        detail = f"{len(bad)} of {n} tokens fail; first at {bad[0].position}: {bad[0].reason}"
    elif mean > tol.logprob_mean:
        reason = "logprob_mean"
        detail = f"mean |Δlp| {mean:.3g} > {tol.logprob_mean:.3g}"
    elif ties > tol.allowed_near_ties(n):
        reason = "near_ties"
        detail = f"{ties} near-ties in {n} tokens > {tol.allowed_near_ties(n)} allowed"
    return Verdict(
        ok=reason == "ok",
        reason=reason,
        detail=detail,
        tokens=tuple(tokens),
        max_logprob_diff=worst,
        mean_logprob_diff=mean,
        near_ties=ties,
    )


_TOL_FIELDS = tuple(f.name for f in fields(Tolerances))


@dataclass(frozen=True, slots=True, kw_only=True)
class ToleranceTable:
    """Calibrated tolerances by (model content address, dtype), with how they were made.

    JSON form (``hearth verify calibrate`` writes it)::

        {"format": "hearth-tolerances-v1", "sampler": "hearth-gumbel-v1",
         "entries": [{"model_id": "sha256:…", "dtype": "bfloat16", "logprob": …, …}],
         "provenance": {…free-form: command, set-ups, measured maxima, safety…}}
    """

    entries: tuple[Tolerances, ...]
    provenance: Mapping[str, Any]

    def get(self, model_id: str, dtype: str) -> Tolerances | None:
        """The tolerances for ``model_id`` at ``dtype``; None when never calibrated."""
        for t in self.entries:
            if t.model_id == model_id and t.dtype == dtype:
                return t
        return None

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": TOLERANCES_FORMAT,
                "sampler": SAMPLER_ID,
                "entries": [asdict(t) for t in self.entries],
                "provenance": dict(self.provenance),
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ToleranceTable:
        """Parse the JSON form; ``ValueError`` for anything malformed."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"tolerances: not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != TOLERANCES_FORMAT:
            raise ValueError(f"tolerances: format is not {TOLERANCES_FORMAT}")
        if doc.get("sampler") != SAMPLER_ID:
            raise ValueError(f"tolerances: made for sampler {doc.get('sampler')!r}")
        raw = doc.get("entries")
        if not isinstance(raw, list):
            raise ValueError("tolerances: entries must be a list")
        return cls(
            entries=tuple(_entry(e) for e in raw), provenance=dict(doc.get("provenance") or {})
        )


def _entry(e: object) -> Tolerances:
    if not isinstance(e, dict) or set(e) != set(_TOL_FIELDS):
        raise ValueError(f"tolerances: an entry needs exactly {', '.join(_TOL_FIELDS)}")
    if not isinstance(e["model_id"], str) or not isinstance(e["dtype"], str):
        raise ValueError("tolerances: model_id and dtype are strings")
    nums: dict[str, float] = {}
    for name in _TOL_FIELDS[2:]:
        v = e[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
            raise ValueError(f"tolerances: {name} must be a finite number >= 0")
        nums[name] = float(v)
    return Tolerances(model_id=e["model_id"], dtype=e["dtype"], **nums)


def tolerate(values: Sequence[float], safety: float, floor: float) -> float:
    """A calibrated bound: the largest honest value times ``safety``, at least ``floor``."""
    return max(floor, safety * max(values, default=0.0))
