"""Gas per job: cumulative vouchers versus one escrow transfer per job.

A *job* is one voucher increment: the buyer signs a new cumulative voucher after each
job, and one ``redeem`` of the last voucher settles them all, so the redemption's gas
divided by the number of jobs is the gas per job. The baseline is ``NaiveEscrow``: one
``settle`` transaction per job, measured in the same run on the same chain.

Conditions are steady state and spelled out: the hub has redeemed before (its fee slot
is non-zero) and the provider already holds tokens; every measured channel is *new*
(its first redemption, the dearest case), and ``redeem_again_gas`` shows a later
redemption on an existing channel. Gas is deterministic, so the embedded EVM gives the
same figures as anvil or a mainnet fork (Cancun/Prague pricing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from market.chain.backends import fund_native, start_embedded_chain
from market.chain.client import ChainClient
from market.chain.contracts import PaymentHub, SignedVoucher
from market.chain.deployment import Deployment, deploy_all
from market.chain.voucher import Voucher, sign_voucher

__all__ = ["measure_gas"]

PRICE_PER_JOB = 1_000  # base units (0.001 hUSD)


def _buyer(
    admin: ChainClient, d: Deployment, deposit: int, spenders: Sequence[str]
) -> tuple[ChainClient, bytes]:
    key = os.urandom(32)
    buyer = admin.with_key(key)
    fund_native(admin, buyer.address, 10**17)
    tok = d.erc20(buyer)
    tok.mint(buyer.address, deposit * len(spenders))
    for spender in spenders:
        tok.approve(spender, deposit)
    return buyer, key


def _jobs_voucher(
    hub: PaymentHub,
    buyer: ChainClient,
    key: bytes,
    provider: bytes,
    token: bytes,
    jobs: int,
    start: int = 0,
) -> SignedVoucher:
    """Sign one voucher per job (as a buyer would); return the last one."""
    sv = None
    for j in range(1, jobs + 1):
        v = Voucher(
            buyer=buyer.address_bytes,
            provider=provider,
            token=token,
            cumulative_amount=(start + j) * PRICE_PER_JOB,
        )
        sv = SignedVoucher(v, sign_voucher(key, hub.domain(), v))
    assert sv is not None
    return sv


def measure_gas(
    jobs: Sequence[int] = (1, 10, 100, 1000),
    buyers: Sequence[int] = (10, 100),
    naive_samples: int = 20,
) -> dict[str, Any]:
    """Run the benchmark on a fresh embedded chain; return the figures as a dict."""
    chain = start_embedded_chain()
    admin = chain.client(0)
    d = deploy_all(admin)
    escrow = admin.deploy("NaiveEscrow")
    token = bytes.fromhex(d.token[2:])
    provider = admin.with_key(os.urandom(32))
    fund_native(admin, provider.address, 10**18)
    hub = d.hub(provider)

    # warm-up: the protocol has run before, the provider holds tokens
    b, k = _buyer(admin, d, 10**9, [d.payment_hub])
    d.hub(b).deposit(d.token, 10**9)
    hub.redeem(_jobs_voucher(hub, b, k, provider.address_bytes, token, 1))

    gas_per_job: dict[str, float] = {}
    redeem_gas: dict[str, int] = {}
    for n in jobs:
        b, k = _buyer(admin, d, 10**9, [d.payment_hub])
        d.hub(b).deposit(d.token, 10**9)
        rec = hub.redeem(_jobs_voucher(hub, b, k, provider.address_bytes, token, n))
        redeem_gas[str(n)] = rec.gas_used
        gas_per_job[str(n)] = rec.gas_used / n
    again = hub.redeem(
        _jobs_voucher(hub, b, k, provider.address_bytes, token, jobs[-1], start=jobs[-1])
    )

    # baseline: one escrow transaction per job
    b, _ = _buyer(admin, d, 10**9, [escrow])
    naive = b.contract("NaiveEscrow", escrow)
    b.transact(naive.functions.deposit(d.token, 10**9))
    naive_gas = []
    for j in range(naive_samples):
        job_id = j.to_bytes(32, "big")
        naive_gas.append(
            b.transact(
                naive.functions.settle(job_id, provider.address, d.token, PRICE_PER_JOB)
            ).gas_used
        )
    naive_per_job = sum(naive_gas) / len(naive_gas)

    many: dict[str, float] = {}
    for n in buyers:
        batch = []
        for _ in range(n):
            b, k = _buyer(admin, d, 10**7, [d.payment_hub])
            d.hub(b).deposit(d.token, 10**7)
            batch.append(_jobs_voucher(hub, b, k, provider.address_bytes, token, 1))
        rec = hub.redeem_many(batch)
        many[str(n)] = rec.gas_used / n

    return {
        "gas_per_job": gas_per_job,
        "redeem_gas": redeem_gas,
        "redeem_again_gas": again.gas_used,
        "naive_gas_per_job": naive_per_job,
        "redeem_many_gas_per_buyer": many,
        "savings_vs_naive_at_100": (naive_per_job / gas_per_job["100"])
        if "100" in gas_per_job
        else None,
        "target_gas_per_job_at_100": 1_000,
        "meets_target": gas_per_job.get("100", float("inf")) <= 1_000,
        "chain": "embedded eth-tester/py-evm",
    }
