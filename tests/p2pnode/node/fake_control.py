"""A stand-in node for the dashboard and metrics tests.

It is real where it can be: a real SQLite :class:`market.ledger.Ledger` holding
real signed vouchers, jobs, redemptions and earnings; a real
:class:`ProviderStats`; a real :class:`Telemetry` reading them. Only the running
parts that need a live network and model (the provider service's loop, the
libp2p host, the power governor) are plain objects with the attributes the
telemetry reads — the node's state is not hardware.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coincurve
from eth_hash.auto import keccak

from market.chain.voucher import Voucher, VoucherDomain, sign_voucher
from market.ledger import Ledger
from p2pnode.node.provider import ProviderStats
from p2pnode.node.telemetry import GpuSampler, Telemetry

PROVIDER = b"\x22" * 20
TOKEN = b"\x33" * 20
DOMAIN = VoucherDomain(chain_id=31337, verifying_contract=b"\x44" * 20)
DECIMALS = 6

# What the ledger is filled with, so tests can state expectations from it.
JOB_AMOUNTS = [1_250_000, 2_500_000, 800_000, 3_000_000, 0]  # last one cancelled
JOB_STATUSES = ["done", "done", "done", "done", "cancelled"]
VOUCHERS = [7_550_000, 2_000_000]  # two buyers' latest cumulative vouchers
CONFIRMED = 5_000_000  # buyer 0: redeemed on chain up to this
PENDING_REDEMPTION = 1_000_000  # buyer 1: a redemption in flight


def _key_and_address() -> tuple[bytes, bytes]:
    key = os.urandom(32)
    pub = coincurve.PrivateKey(key).public_key.format(compressed=False)[1:]
    return key, keccak(pub)[-20:]


@dataclass
class FakeService:
    stats: ProviderStats
    active_jobs: int = 1
    accepting: bool = True
    _bids: dict[bytes, Any] = field(default_factory=dict)


class FakeNet:
    def __init__(self) -> None:
        self.peers = [f"12D3KooWPeer{i:02d}" for i in range(3)]
        self.dropped = 4

    def stats(self) -> dict[str, Any]:
        return {
            "peers": len(self.peers),
            "pubsub": {
                "delivered": 120,
                "dropped_full": self.dropped,
                "invalid": 1,
                "malformed_frames": 0,
                "blacklisted": 0,
            },
        }

    def connected_peers(self) -> list[str]:
        return list(self.peers)


class FakeNode:
    """Implements :class:`p2pnode.node.dashboard.NodeControl` over real ledger data."""

    def __init__(self, data_dir: Path, *, gpus: GpuSampler | None = None) -> None:
        self.ledger = Ledger(data_dir / "ledger.sqlite")
        self.service = FakeService(
            stats=ProviderStats(
                rfqs_seen=40,
                bids=12,
                declines=6,
                awards=5,
                jobs_completed=4,
                jobs_failed=1,
                tokens_served=2_345,
                earned=sum(JOB_AMOUNTS),
            )
        )
        self.service._bids[b"\x09" * 16] = object()  # one bid still open
        self.net = FakeNet()
        self.power = "normal"
        self.price_floor = 1_200
        self.started_at = time.time() - 3600
        self.telemetry = Telemetry(
            ledger_path=data_dir / "ledger.sqlite",
            provider_address="0x" + PROVIDER.hex(),
            currency_symbol="USDC",
            currency_decimals=DECIMALS,
            gpus=gpus,
        )
        self.telemetry.note_power("normal", "start", at=self.started_at)
        self.telemetry.note_power("throttled", "panel 170 A", at=self.started_at + 1200)
        self.telemetry.note_power("normal", "panel 120 A", at=self.started_at + 1500)
        self._fill_ledger()
        self.calls: list[tuple[str, Any]] = []

    def _fill_ledger(self) -> None:
        now = time.time()
        for i, (amount, status) in enumerate(zip(JOB_AMOUNTS, JOB_STATUSES, strict=True)):
            job_id = bytes([i + 1]) * 16
            self.ledger.record_job(job_id, role="provider", counterparty="buyer", model_id="m")
            self.ledger.finish_job(job_id, tokens=100 * (i + 1), amount=amount, status=status)
            t = now - 3000 + 600 * i  # spread over the last hour, for the chart
            self.ledger.db["jobs"].update(job_id.hex(), {"started_at": t - 5, "finished_at": t})
        self.ledger.record_job(b"\x0f" * 16, role="provider", counterparty="b", model_id="m")
        vouchers = []
        for amount in VOUCHERS:
            key, buyer = _key_and_address()
            v = Voucher(buyer=buyer, provider=PROVIDER, token=TOKEN, cumulative_amount=amount)
            assert self.ledger.accept_voucher(DOMAIN, v, sign_voucher(key, DOMAIN, v))
            vouchers.append(v)
        v0 = Voucher(
            buyer=vouchers[0].buyer, provider=PROVIDER, token=TOKEN, cumulative_amount=CONFIRMED
        )
        rid = self.ledger.record_intent(v0, b"\xaa" * 32, b"raw", 0)
        assert self.ledger.settle(rid, "confirmed", block_number=5, gas_used=60_000)
        v1 = Voucher(
            buyer=vouchers[1].buyer,
            provider=PROVIDER,
            token=TOKEN,
            cumulative_amount=PENDING_REDEMPTION,
        )
        self.ledger.record_intent(v1, b"\xbb" * 32, b"raw", 1)
        self.ledger.record_earning(
            tx_hash=b"\xaa" * 32,
            log_index=0,
            block_number=5,
            timestamp=int(now),
            buyer=vouchers[0].buyer,
            provider=PROVIDER,
            token=TOKEN,
            amount=CONFIRMED,
            fee=50_000,
            cumulative_amount=CONFIRMED,
            epoch=0,
        )

    # ------------------------------------------------------------ NodeControl
    def snapshot(self) -> dict[str, Any]:
        return self.telemetry.snapshot(
            state="serving",
            service=self.service,
            net=self.net,
            power_state=self.power,
            price_floor_per_1k=self.price_floor,
            started_at=self.started_at,
            peer_id="12D3KooWSelf",
        )

    def drain(self) -> None:
        self.calls.append(("drain", None))
        self.service.accepting = False

    def resume(self) -> None:
        self.calls.append(("resume", None))
        self.service.accepting = True

    def set_price_floor(self, price_per_1k: int) -> None:
        self.calls.append(("price", price_per_1k))
        self.price_floor = price_per_1k
