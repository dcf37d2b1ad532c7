"""The simulated world: configuration, nodes, and how they are drawn from the seed.

Every random choice comes from ``random.Random`` instances derived from the one
seed (``random.Random(f"{seed}/<purpose>")``), so a run is reproducible exactly and
adding randomness in one place does not shift the draws of another.
"""

from __future__ import annotations

import hashlib
import random
import shlex
from collections import deque
from dataclasses import dataclass, field

from market.protocol.buyer import BuyerJob
from market.protocol.payments import BuyerWallet, ChannelTerms, VoucherBook, VoucherDraft
from market.protocol.policy import CostPlusPolicy
from market.protocol.provider import ProviderJob

__all__ = [
    "INJECTIONS",
    "BuyerNode",
    "Generation",
    "ProviderNode",
    "SimConfig",
    "Tracked",
    "model_id",
    "peer_name",
]

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

#: Deliberate bugs the simulator can inject to prove its invariant checker works.
INJECTIONS = ("", "overpay", "lose_outcome")


def peer_name(prefix: str, i: int) -> str:
    """A base58-valid stand-in peer id: ``prefix`` + base58(i)."""
    out = ""
    while True:
        i, r = divmod(i, 58)
        out = _B58[r] + out
        if i == 0:
            return prefix + out


def model_id(i: int) -> str:
    """The content address of simulated model ``i``."""
    return hashlib.sha256(f"sim-model-{i}".encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """Everything a run depends on; ``command()`` is the CLI line that reproduces it."""

    providers: int = 100
    buyers: int = 0  # 0 → max(4, providers // 10)
    jobs: int = 1000
    seed: int = 1
    crash_rate: float = 0.0  # fraction of providers that crash during the run
    freeze_rate: float = 0.0  # fraction that freeze (SIGSTOP-like) for a while
    loss: float = 0.0
    partitions: int = 0  # random region-pair partitions during the run
    models: int = 8
    shard_size: int = 12
    mesh_degree: int = 6
    jobs_per_provider_s: float = 0.12  # arrival rate = providers × this
    min_tokens: int = 32
    max_tokens: int = 128
    chunk_tokens: int = 16
    max_price_per_1k: int = 1000
    inject: str = ""

    def __post_init__(self) -> None:
        if self.providers < 1 or self.jobs < 1 or self.buyers < 0 or self.models < 1:
            raise ValueError("providers, jobs and models must be >= 1, buyers >= 0")
        for name in ("crash_rate", "freeze_rate", "loss"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be within 0..1, got {v}")
        if self.loss > 0.5:
            raise ValueError("--loss above 0.5 makes every stream a retransmission storm")
        if not 1 <= self.min_tokens <= self.max_tokens <= 100_000:
            raise ValueError("need 1 <= min_tokens <= max_tokens <= 100000")
        if not 0 < self.jobs_per_provider_s <= 1000 or self.partitions < 0:
            raise ValueError("--rate must be within (0, 1000] and --partitions >= 0")
        if self.inject not in INJECTIONS:
            raise ValueError(f"--inject must be one of {INJECTIONS[1:]}")

    @property
    def n_buyers(self) -> int:
        return self.buyers or max(4, self.providers // 10)

    def command(self) -> str:
        """The exact ``hearth sim`` command line that reproduces this run."""
        parts = [
            "hearth",
            "sim",
            f"--providers={self.providers}",
            f"--buyers={self.n_buyers}",
            f"--jobs={self.jobs}",
            f"--seed={self.seed}",
        ]
        if self.crash_rate:
            parts.append(f"--crash-rate={self.crash_rate}")
        if self.freeze_rate:
            parts.append(f"--freeze-rate={self.freeze_rate}")
        if self.loss:
            parts.append(f"--loss={self.loss}")
        if self.partitions:
            parts.append(f"--partitions={self.partitions}")
        if self.jobs_per_provider_s != 0.12:
            parts.append(f"--rate={self.jobs_per_provider_s}")
        if self.inject:
            parts.append(f"--inject={self.inject}")
        return shlex.join(parts)


class Tracked:
    """A machine plus the simulator's bookkeeping for its timer."""

    __slots__ = ("dead", "machine", "owner", "timer_at")

    def __init__(self, machine: BuyerJob | ProviderJob, owner: BuyerNode | ProviderNode) -> None:
        self.machine = machine
        self.owner = owner
        self.timer_at: float | None = None
        self.dead = False


class Generation:
    """The fake engine's state for one job on one provider."""

    __slots__ = ("base", "finish_at", "job_id", "paused", "produced", "scheduled")

    def __init__(self, job_id: bytes, base: int, finish_at: int) -> None:
        self.job_id = job_id
        self.base = base  # absolute position of the first token to generate
        self.finish_at = finish_at  # new tokens to produce before finishing
        self.produced = 0
        self.paused = False
        self.scheduled = False


class ProviderNode:
    """One simulated provider: identity, hardware, state, and its job machines."""

    __slots__ = (
        "active",
        "address",
        "alive",
        "book",
        "capacity",
        "contrib",
        "engine",
        "epoch",
        "frozen_until",
        "idx",
        "machines",
        "model_idx",
        "models",
        "name",
        "policy",
        "power",
        "price_ok",
        "region",
        "tps",
    )

    def __init__(
        self,
        idx: int,
        rng: random.Random,
        n_models: int,
        model_ids: list[str],
        terms: ChannelTerms,
        deposits: dict[bytes, int],
        max_price: int,
        chunk_tokens: int,
    ) -> None:
        self.idx = idx
        self.name = peer_name("P", idx)
        self.address = b"\x50" + idx.to_bytes(19, "big")
        self.region = rng.randrange(4)
        k = rng.choice((1, 1, 2, 3))
        self.model_idx = tuple(sorted(rng.sample(range(n_models), min(k, n_models))))
        self.models = frozenset(model_ids[m] for m in self.model_idx)
        self.capacity = rng.choice((1, 2, 2, 4))
        self.tps = rng.uniform(20.0, 80.0)
        u = rng.random()
        self.power = "normal" if u < 0.85 else ("throttled" if u < 0.97 else "draining")
        self.policy = CostPlusPolicy(
            electricity_per_kwh=(120_000, 150_000, 250_000, 90_000)[self.region],
            power_draw_w=rng.uniform(200.0, 450.0),
            margin=rng.uniform(0.05, 0.5),
            chunk_tokens=chunk_tokens,
            credit_chunks=rng.choice((1, 1, 2)),
        )
        throttle = self.policy.throttle_factor if self.power == "throttled" else 1.0
        per_token = (self.policy.electricity_per_kwh * self.policy.power_draw_w / 1000 / 3600) / (
            self.tps * throttle
        )
        self.price_ok = 1000 * per_token * (1 + self.policy.margin) < max_price - 1
        self.book = VoucherBook(
            provider_address=self.address,
            terms=terms,
            verifier=_fake_verify,
            cover_of=deposits.__getitem__,
        )
        self.alive = True
        self.frozen_until = 0.0
        self.active = 0
        self.contrib = 0  # free slots this node contributes to its models' counts
        self.epoch = 0
        self.machines: dict[bytes, Tracked] = {}
        self.engine: dict[bytes, Generation] = {}


class BuyerNode:
    """One simulated buyer: identity, wallet, and its open jobs."""

    __slots__ = ("address", "idx", "jobs", "name", "queues", "region", "wake_at", "wallet")

    def __init__(
        self, idx: int, rng: random.Random, terms: ChannelTerms, deposit: int, overpay: bool
    ) -> None:
        self.idx = idx
        self.name = peer_name("B", idx)
        self.address = b"\x42" + idx.to_bytes(19, "big")
        self.region = rng.randrange(4)
        cls = _OverpayingWallet if overpay else BuyerWallet
        self.wallet = cls(
            buyer_address=self.address, deposit=deposit, terms=terms, signer=_fake_sign
        )
        self.jobs: dict[bytes, Tracked] = {}
        # the admission queue: per model, jobs waiting for a free provider (FIFO)
        self.queues: dict[int, deque[bytes]] = {}
        self.wake_at: dict[int, float] = {}  # the queue's next retry, per model


def _fake_sign(draft: VoucherDraft) -> bytes:
    """Stand-in signature: the buyer's address, padded (no crypto in the simulator)."""
    return draft.buyer_address + bytes(45)


def _fake_verify(voucher: object) -> bool:
    from market.protocol.messages import Voucher

    assert isinstance(voucher, Voucher)
    return voucher.signature[:20] == voucher.buyer_address


class _OverpayingWallet(BuyerWallet):
    """A deliberately buggy wallet (``--inject overpay``): signs one unit too many."""

    __slots__ = ()

    def pay(  # type: ignore[no-untyped-def]
        self, job_id: bytes, provider_address: bytes, amount: int, *, reserved: int, job_paid: int
    ):
        more = min(amount + 1, reserved)
        return super().pay(
            job_id, provider_address, more, reserved=reserved, job_paid=job_paid - amount + more
        )


@dataclass(slots=True)
class JobMeta:
    """Simulator-side facts about one job (not visible to the machines)."""

    buyer: BuyerNode
    model: int
    start: float
    shard0: int
    region_pinned: bool
    publishes: int = 0
    providers: list[str] = field(default_factory=list)
    queued: bool = False  # has waited in the admission queue (goes back to its head)
    woken: bool = False  # let out of the queue; its award lets the next one out
