"""A node's offer states what its engine measured: free slots, tokens/s, time to first token."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

from market.protocol.policy import CostPlusPolicy, ProviderStatus
from p2pnode.node.runtime import _offer

POLICY = CostPlusPolicy(electricity_per_kwh=300_000, power_draw_w=350.0, base_ttft_ms=150)


def status(**kw: Any) -> ProviderStatus:
    fields: dict[str, Any] = dict(
        provider="PA",
        provider_address=b"\xaa" * 20,
        region="eu-west",
        power_state="normal",
        models=frozenset({"ab" * 32}),
        active_jobs=1,
        capacity=4,
        tokens_per_s=22.5,
        ttft_ms=46.4,
    )
    fields.update(kw)
    return ProviderStatus(**fields)


def node(
    st: ProviderStatus, policy: CostPlusPolicy = POLICY, *, name: str = "SmolLM2", version: int = 0
) -> Any:
    service = SimpleNamespace(status=lambda: st, policy=policy)
    engine = SimpleNamespace(max_len=2048)
    serving = SimpleNamespace(
        service=service, engine=engine, model_hex="ab" * 32, name=name, version=version
    )
    settings = SimpleNamespace(policy=POLICY, offer_ttl_s=30)
    return SimpleNamespace(serving=serving, service=service, s=settings)


def test_the_offer_states_the_measured_figures() -> None:
    st = status()
    offer = _offer(node(st), ())
    assert offer.free_slots == 3
    assert offer.tokens_per_s == 22.5
    assert offer.ttft_ms == 46
    assert offer.load == 0.25
    assert offer.models[0].price_per_1k == POLICY.price_per_1k(st)


def test_a_throttled_node_offers_the_speed_its_bids_state() -> None:
    offer = _offer(node(status(power_state="throttled")), ())
    assert offer.tokens_per_s == 22.5 * POLICY.throttle_factor


def test_before_any_measured_first_token_the_policy_figure_is_stated() -> None:
    offer = _offer(node(status(ttft_ms=None)), ())
    assert offer.ttft_ms == 150


def test_the_dashboard_price_floor_reaches_the_offer() -> None:
    floored = dataclasses.replace(POLICY, floor_per_1k=9_999)
    offer = _offer(node(status(), floored), ())
    assert offer.models[0].price_per_1k == 9_999


def test_a_node_serving_a_release_offers_its_name_and_version() -> None:
    """Buyers asking by name take the newest release offered: the offer says which."""
    offer = _offer(node(status(), name="smol", version=7), ())
    (m,) = offer.models
    assert (m.model_id, m.name, m.version) == ("ab" * 32, "smol", 7)
    assert _offer(node(status()), ()).models[0].version == 0  # a plain model folder
