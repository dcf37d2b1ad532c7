"""The buyer's catalog: live offers, and whom to ask first (equal providers take turns)."""

from __future__ import annotations

import dataclasses
from typing import Any

from market.protocol import ModelOffer, Offer
from market.sdk.catalog import Catalog

MODEL = "ab" * 32
NAMES = [f"P{c}" for c in "ABCDEF"]


def offer(p: str, **kw: Any) -> Offer:
    price = kw.pop("price", 500)
    fields: dict[str, Any] = dict(
        provider=p,
        provider_address=b"\xaa" * 20,
        region="eu-west",
        power_state="normal",
        load=0.0,
        gpus=(),
        models=(ModelOffer(model_id=MODEL, name="SmolLM2", price_per_1k=price, max_context=2048),),
        ttl_s=30,
        free_slots=4,
        tokens_per_s=30.0,
        ttft_ms=150,
    )
    fields.update(kw)
    return Offer(**fields)


def catalog(*offers: Offer) -> Catalog:
    c = Catalog()
    for o in offers:
        c.add(o, 0.0)
    return c


def first(c: Catalog, salt: bytes = b"job") -> str:
    return c.candidates(MODEL, 1.0, salt=salt)[0].provider


def test_a_buyer_asking_four_of_six_equal_providers_asks_each_in_turn() -> None:
    c = catalog(*(offer(p) for p in NAMES))
    asked = dict.fromkeys(NAMES, 0)
    for n in range(600):
        for o in c.candidates(MODEL, 1.0, salt=n.to_bytes(16, "big"))[:4]:
            asked[o.provider] += 1
    assert all(300 <= a <= 500 for a in asked.values()), asked  # 400 each on average


def test_without_a_salt_every_call_draws_anew() -> None:
    c = catalog(*(offer(p) for p in NAMES))
    heads = {c.candidates(MODEL, 1.0)[0].provider for _ in range(60)}
    assert heads == set(NAMES)


def test_the_same_salt_gives_the_same_order() -> None:
    c = catalog(*(offer(p) for p in NAMES))
    assert c.candidates(MODEL, 1.0, salt=b"x") == c.candidates(MODEL, 1.0, salt=b"x")


def test_cheaper_faster_and_idle_go_first_whatever_the_draw() -> None:
    for salt in (b"a", b"b", b"c", b"d"):
        assert first(catalog(offer("PA", price=600), offer("PB", price=400)), salt) == "PB"
        assert first(catalog(offer("PA", tokens_per_s=20.0), offer("PB")), salt) == "PB"
        assert first(catalog(offer("PA", load=1.0), offer("PB", load=0.25)), salt) == "PB"
        # a node that states no speed is taken as the slowest that does
        slow = offer("PC", tokens_per_s=20.0)
        assert first(catalog(offer("PA", tokens_per_s=0.0), offer("PB"), slow), salt) == "PB"


def test_draining_expired_and_other_models_are_not_candidates() -> None:
    c = Catalog()
    c.add(offer("PA", power_state="draining"), 0.0)
    c.add(offer("PB", ttl_s=1), 0.0)
    other = ModelOffer(model_id="cd" * 32, name="Other", price_per_1k=1, max_context=2048)
    c.add(offer("PC", models=(other,)), 0.0)
    c.add(offer("PD"), 0.0)
    assert [o.provider for o in c.candidates(MODEL, 2.0)] == ["PD"]
    assert c.candidates("ef" * 32, 2.0) == []


def test_a_name_resolves_to_its_newest_release_and_name_at_version_pins_one() -> None:
    """Mid-rollout some providers serve release 1 of a model, others release 2: a buyer
    asking by name takes the newest; NAME@VERSION pins one; an address pins itself."""
    old, new = "c1" * 32, "c2" * 32

    def serving(p: str, model_id: str, version: int) -> Offer:
        m = ModelOffer(model_id=model_id, name="smol", price_per_1k=1, max_context=2048)
        return offer(p, models=(dataclasses.replace(m, version=version),))

    c = catalog(serving("PA", old, 1), serving("PB", new, 2), serving("PC", old, 1))
    assert c.resolve("smol", 1.0) == new
    assert c.resolve("SMOL", 1.0) == new
    assert c.resolve("smol@1", 1.0) == old
    assert c.resolve("smol@2", 1.0) == new
    assert c.resolve("smol@3", 1.0) is None
    assert c.resolve(old, 1.0) == old and c.resolve("sha256:" + old, 1.0) == old
    # once release 2's only provider is gone, the name falls back to what is offered
    c = catalog(serving("PA", old, 1))
    assert c.resolve("smol", 1.0) == old
