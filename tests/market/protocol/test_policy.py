"""Bid policy: cost-plus price, power state, capacity, region, price ceiling."""

from __future__ import annotations

import dataclasses
import math

import pytest

from market.protocol.messages import Award, DeclineReason, Rfq
from market.protocol.policy import CostPlusPolicy, ProviderStatus, Quote, Refusal

MODEL = "ab" * 32
RFQ = Rfq(
    job_id=bytes(16),
    buyer="Buyer",
    buyer_address=b"\xbb" * 20,
    model_id=MODEL,
    prompt_tokens=1,
    max_tokens=100,
    max_price_per_1k=1000,
    region="",
    bid_window_ms=100,
)
STATUS = ProviderStatus(
    provider="PA",
    provider_address=b"\xaa" * 20,
    region="eu-west",
    power_state="normal",
    models=frozenset({MODEL}),
    active_jobs=0,
    capacity=2,
    tokens_per_s=40.0,
)
POLICY = CostPlusPolicy(electricity_per_kwh=150_000, power_draw_w=300.0, margin=0.2)


def test_price_is_electricity_cost_plus_margin() -> None:
    per_token = 150_000 * 0.3 / 3600 / 40
    want = math.ceil(1000 * per_token * 1.2)
    q = POLICY.quote(RFQ, STATUS)
    assert isinstance(q, Quote) and q.price_per_1k == want == 375


def test_the_price_comes_from_the_rated_batch_throughput_not_the_live_load() -> None:
    """The box draws the same power for a full batch: a token's cost is that power over
    the rated (warm-up) throughput; live load changes the bid's speed, not its price."""
    rated = dataclasses.replace(STATUS, capacity=8, tokens_per_s=30.0, rated_tokens_per_s=120.0)
    per_token = 150_000 * 0.3 / 3600 / 120
    assert POLICY.price_per_1k(rated) == math.ceil(1000 * per_token * 1.2) == 125
    loaded = dataclasses.replace(rated, active_jobs=7, tokens_per_s=3.0)
    assert POLICY.price_per_1k(loaded) == 125
    q = POLICY.quote(RFQ, dataclasses.replace(loaded, active_jobs=6))
    assert isinstance(q, Quote) and q.price_per_1k == 125 and q.est_tokens_per_s == 3.0
    throttled = dataclasses.replace(rated, power_state="throttled")
    assert POLICY.price_per_1k(throttled) == math.ceil(1000 * per_token * 2 * 1.2)


def test_throttled_node_is_slower_and_dearer() -> None:
    q = POLICY.quote(RFQ, dataclasses.replace(STATUS, power_state="throttled"))
    assert isinstance(q, Quote) and q.price_per_1k == 750 and q.est_tokens_per_s == 20.0


def test_floor_applies() -> None:
    q = dataclasses.replace(POLICY, floor_per_1k=900).quote(RFQ, STATUS)
    assert isinstance(q, Quote) and q.price_per_1k == 900


@pytest.mark.parametrize(
    ("change", "policy_change", "reason"),
    [
        ({"models": frozenset()}, {}, DeclineReason.MODEL_NOT_HELD),
        ({"power_state": "draining"}, {}, DeclineReason.POWER_SHED),
        ({"power_state": "off"}, {}, DeclineReason.POWER_SHED),
        ({"active_jobs": 2}, {}, DeclineReason.BUSY),
        ({}, {"floor_per_1k": 2000}, DeclineReason.PRICE_BELOW_FLOOR),
        ({"region": "ap-south"}, {"strict_region": True}, DeclineReason.REGION),
    ],
)
def test_declines_say_why(
    change: dict[str, object], policy_change: dict[str, object], reason: DeclineReason
) -> None:
    rfq = dataclasses.replace(RFQ, region="eu-west") if "region" in change else RFQ
    status = dataclasses.replace(STATUS, **change)  # type: ignore[arg-type]
    r = dataclasses.replace(POLICY, **policy_change).quote(rfq, status)  # type: ignore[arg-type]
    assert isinstance(r, Refusal) and r.reason is reason


def test_queue_room_keeps_bidding_with_a_later_first_token() -> None:
    busy = dataclasses.replace(STATUS, active_jobs=2, max_queue=1)
    q = POLICY.quote(RFQ, busy)
    assert isinstance(q, Quote) and q.est_ttft_ms > POLICY.base_ttft_ms


def test_admit_refuses_when_full_or_shedding() -> None:
    aw = Award(
        job_id=bytes(16),
        provider="PA",
        price_per_1k=375,
        chunk_tokens=16,
        credit_chunks=1,
        max_tokens=100,
    )
    assert POLICY.admit(aw, STATUS, held=False) is None
    full = POLICY.admit(aw, dataclasses.replace(STATUS, active_jobs=2), held=False)
    assert isinstance(full, Refusal) and full.reason is DeclineReason.BUSY
    # the slot this award's bid holds is counted in active_jobs: it is ours
    assert POLICY.admit(aw, dataclasses.replace(STATUS, active_jobs=2), held=True) is None
    for held in (False, True):
        off = POLICY.admit(aw, dataclasses.replace(STATUS, power_state="off"), held=held)
        assert isinstance(off, Refusal) and off.reason is DeclineReason.POWER_SHED
