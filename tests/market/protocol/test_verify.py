"""The verification rule (market/protocol/verify.py), table-driven.

Each row is one job: the provider's claim and the verifier's rescore, built from one
honest baseline with one thing changed. The numbers are the issue's measurements on
SmolLM2-135M: fp32 set-ups agree within 2.5e-5, bf16 within 0.23, an int8 substitute
moves logprobs by up to 7.3, a swapped token by 31.7.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from market.protocol import verify as V

MODEL = "sha256:" + "ab" * 32
TOL = V.Tolerances(
    model_id=MODEL,
    dtype="bfloat16",
    logprob=0.5,
    logprob_mean=0.1,
    greedy_gap=0.5,
    tie_margin=0.6,
    boundary_k=0.5,
    boundary_p=0.05,
    near_tie_rate=0.1,
)
N = 20
TOKENS = tuple(100 + i for i in range(N))
LPS = tuple(-0.1 - 0.05 * i for i in range(N))
GREEDY = V.Params(temperature=0.0)
SAMPLED = V.Params(temperature=0.8, top_p=0.9, top_k=50, seed=7)


def _rescore(**over: Any) -> V.Rescore:
    """The verifier agrees exactly with the claim unless told otherwise."""
    base: dict[str, Any] = dict(
        model_id=MODEL,
        dtype="float32",
        sampler=V.SAMPLER_ID,
        prompt_tokens=12,
        token_ids=TOKENS,
        logprobs=LPS,
        top_ids=tuple((t, 1) for t in TOKENS),
        top_logprobs=tuple((lp, lp - 1) for lp in LPS),
        choice=TOKENS,
        margin=(0.0,) * N,
        outside_k=(0.0,) * N,
        outside_p=(0.0,) * N,
    )
    base.update(over)
    return V.Rescore(**base)


def _claim(params: V.Params = GREEDY, **over: Any) -> V.Claim:
    base: dict[str, Any] = dict(model_id=MODEL, params=params, token_ids=TOKENS, logprobs=LPS)
    base.update(over)
    return V.Claim(**base)


def _at(seq: tuple[Any, ...], i: int, value: Any) -> tuple[Any, ...]:
    return (*seq[:i], value, *seq[i + 1 :])


def _shift(delta: float) -> tuple[float, ...]:
    return tuple(lp + (delta if i % 2 else -delta) for i, lp in enumerate(LPS))


OTHER = 999  # a token the verifier's sampler did not choose

# (name, claim, rescore, ok, job reason, first failing token reason or None)
CASES = [
    ("honest fp32, exact", _claim(), _rescore(), True, "ok", None),
    ("honest fp32, 2.5e-5 apart", _claim(), _rescore(logprobs=_shift(2.5e-5)), True, "ok", None),
    (
        "honest bf16: one token 0.23 off, mean small",
        _claim(),
        _rescore(logprobs=_at(LPS, 3, LPS[3] - 0.23)),
        True,
        "ok",
        None,
    ),
    (
        "int8 substitute: one token 7.3 off",
        _claim(),
        _rescore(logprobs=_at(LPS, 5, LPS[5] - 7.3)),
        False,
        "token",
        "logprob",
    ),
    (
        "quantised: every token 0.2 off (each passes, the mean does not)",
        _claim(),
        _rescore(logprobs=_shift(0.2)),
        False,
        "logprob_mean",
        None,
    ),
    (
        "swapped token: its logprob claimed as the original's",
        _claim(token_ids=_at(TOKENS, 4, OTHER)),
        _rescore(
            token_ids=_at(TOKENS, 4, OTHER),
            logprobs=_at(LPS, 4, -31.7),
            margin=_at((0.0,) * N, 4, 31.5),
        ),
        False,
        "token",
        "logprob",
    ),
    (
        "fabricated logprobs: all -0.01",
        _claim(logprobs=(-0.01,) * N),
        _rescore(),
        False,
        "token",
        "logprob",
    ),
    (
        "malformed logprob: nan",
        _claim(logprobs=_at(LPS, 0, math.nan)),
        _rescore(),
        False,
        "token",
        "malformed",
    ),
    (
        "malformed logprob: positive",
        _claim(logprobs=_at(LPS, 0, 0.1)),
        _rescore(logprobs=_at(LPS, 0, 0.1)),
        False,
        "token",
        "malformed",
    ),
    (
        "greedy near-tie: bf16 flips an argmax by 0.1 nats",
        _claim(),
        _rescore(choice=_at(TOKENS, 2, OTHER), margin=_at((0.0,) * N, 2, 0.1)),
        True,
        "ok",
        None,
    ),
    (
        "cheap-then-prove, greedy: real logprobs, a token 2 nats below the top",
        _claim(),
        _rescore(choice=_at(TOKENS, 2, OTHER), margin=_at((0.0,) * N, 2, 2.0)),
        False,
        "token",
        "greedy_gap",
    ),
    ("seeded, honest", _claim(SAMPLED), _rescore(), True, "ok", None),
    (
        "seeded near-tie within the margin",
        _claim(SAMPLED),
        _rescore(choice=_at(TOKENS, 6, OTHER), margin=_at((0.0,) * N, 6, 0.3)),
        True,
        "ok",
        None,
    ),
    (
        "seed ignored: another token, far from winning",
        _claim(SAMPLED),
        _rescore(choice=_at(TOKENS, 6, OTHER), margin=_at((0.0,) * N, 6, 3.0)),
        False,
        "token",
        "not_sampled",
    ),
    (
        "seeded, token just past the verifier's top-k edge",
        _claim(SAMPLED),
        _rescore(
            choice=_at(TOKENS, 1, OTHER),
            margin=_at((0.0,) * N, 1, 0.2),
            outside_k=_at((0.0,) * N, 1, 0.1),
        ),
        True,
        "ok",
        None,
    ),
    (
        "seeded, token far outside the verifier's top-k",
        _claim(SAMPLED),
        _rescore(
            choice=_at(TOKENS, 1, OTHER),
            margin=_at((0.0,) * N, 1, 0.2),
            outside_k=_at((0.0,) * N, 1, 4.0),
        ),
        False,
        "token",
        "outside_top_k",
    ),
    (
        "seeded, token far outside the verifier's nucleus",
        _claim(SAMPLED),
        _rescore(
            choice=_at(TOKENS, 1, OTHER),
            margin=_at((0.0,) * N, 1, 0.2),
            outside_p=_at((0.0,) * N, 1, 0.3),
        ),
        False,
        "token",
        "outside_top_p",
    ),
    (
        "too many near-ties (3 of 20 > ceil(0.1 * 20))",
        _claim(SAMPLED),
        _rescore(
            choice=(OTHER,) * 3 + TOKENS[3:],
            margin=(0.3,) * 3 + (0.0,) * (N - 3),
        ),
        False,
        "near_ties",
        None,
    ),
    (
        "verifier scored other tokens",
        _claim(),
        _rescore(token_ids=TOKENS[::-1]),
        False,
        "mismatch",
        None,
    ),
    ("other model", _claim(model_id="sha256:" + "cd" * 32), _rescore(), False, "mismatch", None),
    ("other sampler", _claim(sampler="multinomial"), _rescore(), False, "mismatch", None),
    (
        "truncated: fewer claimed logprobs than tokens",
        _claim(logprobs=LPS[:-1]),
        _rescore(),
        False,
        "mismatch",
        None,
    ),
    (
        "seeded job without a seed",
        _claim(V.Params(temperature=0.7)),
        _rescore(),
        False,
        "mismatch",
        None,
    ),
]


@pytest.mark.parametrize(
    ("claim", "rescore", "ok", "reason", "token_reason"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_rule(
    claim: V.Claim, rescore: V.Rescore, ok: bool, reason: str, token_reason: str | None
) -> None:
    v = V.judge(claim, rescore, TOL)
    assert (v.ok, v.reason) == (ok, reason), v.detail
    if token_reason is not None:
        assert v.failed[0].reason == token_reason
    if reason not in ("mismatch",):
        assert len(v.tokens) == N
        assert [t.position for t in v.tokens] == list(range(N))


def test_verdict_carries_each_token() -> None:
    v = V.judge(_claim(), _rescore(logprobs=_at(LPS, 5, LPS[5] - 7.3)), TOL)
    bad = v.tokens[5]
    assert (bad.token_id, bad.claimed_logprob, bad.reason) == (TOKENS[5], LPS[5], "logprob")
    assert bad.verifier_logprob == pytest.approx(LPS[5] - 7.3)
    assert v.max_logprob_diff == pytest.approx(7.3)
    assert [t.position for t in v.failed] == [5]


def test_greedy_top_k_one_is_greedy() -> None:
    p = V.Params(temperature=0.9, top_k=1, seed=None)
    assert p.greedy
    v = V.judge(_claim(p), _rescore(choice=_at(TOKENS, 0, OTHER), margin=(3.0,) * N), TOL)
    assert v.reason == "token" and v.failed[0].reason == "greedy_gap"


def test_tolerances_round_trip_and_lookup() -> None:
    table = V.ToleranceTable(entries=(TOL,), provenance={"command": "hearth verify calibrate"})
    back = V.ToleranceTable.from_json(table.to_json())
    assert back == table
    assert back.get(MODEL, "bfloat16") == TOL
    assert back.get(MODEL, "float16") is None
    assert back.get("sha256:" + "00" * 32, "bfloat16") is None


def _doc(**over: Any) -> str:
    entry = dataclasses.asdict(TOL)
    doc: dict[str, Any] = {
        "format": V.TOLERANCES_FORMAT,
        "sampler": V.SAMPLER_ID,
        "entries": [entry],
    }
    for k, v in over.items():
        if k.startswith("e_"):
            entry[k[2:]] = v
        else:
            doc[k] = v
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        (_doc(format="v0"), "format"),
        (_doc(sampler="multinomial"), "sampler"),
        (_doc(entries={}), "list"),
        (_doc(e_logprob=-1), "logprob"),
        (_doc(e_logprob=float("inf")), "logprob"),
        (_doc(e_logprob=True), "logprob"),
        (_doc(e_extra=1), "exactly"),
        (_doc(e_model_id=3), "strings"),
    ],
)
def test_malformed_tolerances_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        V.ToleranceTable.from_json(text)


@pytest.mark.parametrize(
    ("values", "safety", "floor", "bound"),
    [([0.1, 0.23], 2.0, 0.0, 0.46), ([], 2.0, 0.05, 0.05), ([1e-5], 3.0, 1e-3, 1e-3)],
)
def test_tolerate(values: list[float], safety: float, floor: float, bound: float) -> None:
    assert V.tolerate(values, safety, floor) == pytest.approx(bound)
