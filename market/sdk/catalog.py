"""What the buyer knows of the market: the offers providers gossip, with their TTLs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from market.protocol import ModelOffer, Offer
from market.protocol.auction import tiebreak

__all__ = ["Catalog", "ModelListing"]


@dataclass(frozen=True, slots=True)
class ModelListing:
    """One model on the market: its content address, its name and who serves it."""

    model_id: str
    name: str
    providers: int
    best_price_per_1k: int
    version: int = 0  # its release version (0: not a signed release)


class Catalog:
    """The latest offer of each provider, forgotten when its TTL runs out.

    ``now`` is passed in (seconds, any monotonic clock), so the catalog is testable
    without waiting.
    """

    #: How far apart two offers may be (in units of ``ln`` price or speed ratio) and
    #: still take turns at the head of :meth:`candidates`.
    ROTATE = 0.1

    def __init__(self) -> None:
        self._offers: dict[str, tuple[Offer, float]] = {}
        self._draws = 0  # salts candidates() when the caller gives none

    def add(self, offer: Offer, now: float) -> None:
        """Record ``offer`` (it replaces the provider's previous one)."""
        self._offers[offer.provider] = (offer, now + offer.ttl_s)

    def _live(self, now: float) -> list[Offer]:
        for peer in [p for p, (_, exp) in self._offers.items() if exp <= now]:
            del self._offers[peer]
        return [o for o, _ in self._offers.values()]

    def has(self, provider: str, now: float) -> bool:
        """True when ``provider``'s offer is live."""
        entry = self._offers.get(provider)
        return entry is not None and entry[1] > now

    def provider_count(self, now: float) -> int:
        """How many providers have a live offer."""
        return len(self._live(now))

    def region_of(self, provider: str) -> str:
        entry = self._offers.get(provider)
        return entry[0].region if entry else ""

    def models(self, now: float) -> list[ModelListing]:
        """Every model some live, bidding provider offers, cheapest first per name."""
        seen: dict[str, list[ModelOffer]] = {}
        for offer in self._live(now):
            if offer.power_state in ("draining", "off"):
                continue
            for m in offer.models:
                seen.setdefault(m.model_id, []).append(m)
        out = [
            ModelListing(
                model_id=mid,
                name=ms[0].name,
                providers=len(ms),
                best_price_per_1k=min(m.price_per_1k for m in ms),
                version=max(m.version for m in ms),
            )
            for mid, ms in seen.items()
        ]
        return sorted(out, key=lambda m: (m.name, m.model_id))

    def candidates(self, model_id: str, now: float, *, salt: bytes | None = None) -> list[Offer]:
        """Live offers of ``model_id`` from providers taking work, best first: whom a
        buyer asks first when it asks only a few.

        Best = cheapest, fastest (the offer's measured tokens/s) and least loaded, each
        relative to the best offer, plus a draw keyed by ``salt`` (pass the job id;
        without one, every call draws anew) of up to :attr:`ROTATE`. Equal providers
        so take turns at the head of the list: a buyer that asks four of six equal
        providers does not ask the same four every time.
        """
        found: list[tuple[int, Offer]] = []
        for offer in self._live(now):
            if offer.power_state in ("draining", "off"):
                continue
            prices = [m.price_per_1k for m in offer.models if m.model_id == model_id]
            if prices:
                found.append((min(prices), offer))
        if not found:
            return []
        if salt is None:
            self._draws += 1
            salt = self._draws.to_bytes(8, "big")
        cheapest = max(1, min(price for price, _ in found))
        stated = [o.tokens_per_s for _, o in found if o.tokens_per_s > 0]
        fastest, slowest = (max(stated), min(stated)) if stated else (1.0, 1.0)

        def key(entry: tuple[int, Offer]) -> tuple[float, str]:
            price, offer = entry
            tps = offer.tokens_per_s if offer.tokens_per_s > 0 else slowest  # 0: not stated
            slower = math.log(fastest / tps)
            dearer = math.log(max(1, price) / cheapest)
            draw = self.ROTATE * tiebreak(salt, offer.provider)
            return (dearer + slower + 0.5 * offer.load + draw, offer.provider)

        found.sort(key=key)
        return [offer for _, offer in found]

    def resolve(self, model: str, now: float) -> str | None:
        """A model's content address from its address, its ``NAME`` (the newest release
        offered under it) or ``NAME@VERSION`` (that release only); ``None``: not offered.
        """
        wanted = model.removeprefix("sha256:").lower()
        base, _, ver = wanted.rpartition("@") if "@" in wanted else (wanted, "", "")
        pinned = int(ver) if ver.isdigit() else None
        best: ModelListing | None = None
        for m in self.models(now):
            if wanted == m.model_id:
                return m.model_id
            name = m.name.lower()
            # "SmolLM2-135M-Instruct" also names "SmolLM2-135M-Instruct.Q4_1" (a quantisation)
            if base not in (name, name.rsplit(".", 1)[0]):
                continue
            if pinned is not None and m.version != pinned:
                continue
            if best is None or m.version > best.version:
                best = m
        return None if best is None else best.model_id
