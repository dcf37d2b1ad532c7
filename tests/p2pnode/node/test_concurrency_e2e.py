"""Many jobs at once (issue 15), end to end: real node processes, anvil, the real model.

One local market for the module: a bootstrap and one homeowner ("dora", 8 serving
slots) at first; the failover test adds a second ("eve"). One buyer client runs every
job, so all of them share the buyer's one payment channel with each provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from market.protocol import cost_of
from market.sdk import MarketBusyError, Result
from market.sdk.connect import load_buyer, open_buyer_client
from market.sdk.types import GenerationParams
from p2pnode.localnet import LocalMarket

MODEL = "SmolLM2-135M-Instruct"
SLOTS = 8
PROMPTS = [
    "Name a fruit.",
    "Count to five.",
    "Describe rain.",
    "Say hello to a neighbour.",
    "List three colours.",
    "What is a kettle?",
    "Name a river.",
    "Describe a garden.",
    "What is bread?",
    "Name a tool.",
]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    m = LocalMarket(
        tmp_path_factory.mktemp("many"),
        node_extra=f"[market]\nchunk_tokens = 4\n\n[serving]\nmax_batch = {SLOTS}\n",
        power_extra=f"governor = {{ max_concurrency = {SLOTS}, max_batch = {SLOTS} }}",
    )
    try:
        m.stand_up(["dora"])
        yield m
    finally:
        m.stop()


async def _ready(client: Any, providers: int) -> None:
    with trio.fail_after(60):
        while client.catalog.provider_count(trio.current_time()) < providers:
            await trio.sleep(0.2)


def _exact(r: Result) -> None:
    """Each provider of the job was paid exactly for the tokens it delivered."""
    assert r.completion_tokens == len(r.token_ids) == sum(s.tokens for s in r.shares)
    for share in r.shares:
        assert share.amount == cost_of(share.tokens, share.price_per_1k)
    assert r.cost == sum(s.amount for s in r.shares)


async def test_one_buyer_runs_many_jobs_at_once_on_one_provider(market: LocalMarket) -> None:
    """Eight concurrent jobs of one buyer on the only provider: all stream at once on
    one channel, none is refused, each is paid exactly (the chain check comes last)."""
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:
        await _ready(client, 1)
        results: list[Result] = []
        streaming = 0
        most = 0

        async def one(prompt: str) -> None:
            nonlocal streaming, most
            job = client.generate(
                MODEL,
                messages=[{"role": "user", "content": prompt}],
                params=GenerationParams(max_tokens=24, temperature=0.0),
                timeout_s=180,  # a job stuck in the queue fails here, not after 600 s
            )
            first = True
            async for _ in job:
                if first:
                    streaming += 1
                    most = max(most, streaming)
                    first = False
            streaming -= 1
            results.append(job.result)

        async with trio.open_nursery() as nursery:
            for prompt in PROMPTS[:SLOTS]:
                nursery.start_soon(one, prompt)
    assert len(results) == SLOTS
    assert most == SLOTS, f"at most {most} of our {SLOTS} jobs streamed together"
    dora = market.node("dora").peer_id
    for r in results:
        assert r.failovers == 0 and [s.peer_id for s in r.shares] == [dora]
        _exact(r)


async def test_a_full_market_queues_then_serves_and_past_the_deadline_says_busy(
    market: LocalMarket,
) -> None:
    """Every slot taken by long jobs: a job with a short deadline waits, then fails as
    MarketBusyError with a Retry-After; one with time waits and is served as a slot frees."""
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:
        await _ready(client, 1)
        # a plain completion that keeps counting: it runs to max_tokens, holding its slot
        count = ", ".join(str(i) for i in range(1, 30)) + ","
        long_jobs = [
            client.generate(
                MODEL,
                prompt=f"{count} {i}",
                params=GenerationParams(max_tokens=500, temperature=0.0),
            )
            for i in range(SLOTS)
        ]
        started = 0

        async def hold(job: Any) -> None:
            nonlocal started
            counted = False
            async for _ in job:
                if not counted:
                    started += 1
                    counted = True

        async with trio.open_nursery() as nursery:
            for job in long_jobs:
                nursery.start_soon(hold, job)
            with trio.fail_after(60):
                while started < SLOTS:
                    await trio.sleep(0.1)
            impatient = client.generate(
                MODEL,
                messages=[{"role": "user", "content": "Quick: name a bird."}],
                params=GenerationParams(max_tokens=8),
                timeout_s=3.0,
            )
            with pytest.raises(MarketBusyError) as busy:
                await impatient.text()
            assert busy.value.retry_after_s >= 1
            assert "busy" in str(busy.value) and "queued" in busy.value.detail
            patient = client.generate(
                MODEL,
                messages=[{"role": "user", "content": "Name a bird."}],
                params=GenerationParams(max_tokens=8),
                timeout_s=120.0,
            )
            served: list[Result] = []

            async def wait_patiently() -> None:
                await patient.text()
                served.append(patient.result)

            nursery.start_soon(wait_patiently)
            await trio.sleep(1.5)
            assert not served  # still waiting: every slot is taken
            long_jobs[0].cancel()  # one slot frees
            with trio.fail_after(60):
                while not served:
                    await trio.sleep(0.1)
            for job in long_jobs[1:]:
                job.cancel()
    (r,) = served
    assert r.queued_ms >= 1000 and r.completion_tokens > 0
    _exact(r)


async def test_a_provider_killed_while_serving_several_jobs_of_one_buyer(
    market: LocalMarket,
) -> None:
    """Two providers; the one serving the most of our jobs is SIGKILLed mid-stream:
    every job completes on the other, each provider paid exactly for its own tokens."""
    market.add_identity("eve", provider=True)
    market.wait_serving([market.start_node("eve")])
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:
        await _ready(client, 2)
        serving: dict[str, set[int]] = {}
        results: dict[int, Result] = {}
        killed: list[str] = []
        lock = trio.Lock()

        async def one(i: int) -> None:
            job = client.generate(
                MODEL,
                messages=[{"role": "user", "content": PROMPTS[i]}],
                params=GenerationParams(max_tokens=60, temperature=0.0),
                timeout_s=180,  # a job stuck in the queue fails here, not after 600 s
            )
            async for chunk in job:
                serving.setdefault(chunk.provider, set()).add(i)
                async with lock:
                    busiest = max(serving, key=lambda p: len(serving[p]))
                    if not killed and len(serving[busiest]) >= 3:
                        killed.append(await trio.to_thread.run_sync(market.kill, busiest))
            results[i] = job.result

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, i)
    assert killed and killed[0], "no provider served three of our jobs at once"
    assert len(results) == 6
    moved = [r for r in results.values() if r.failovers]
    assert len(moved) >= 3  # every job on the killed node went to the other
    for r in results.values():
        assert r.finish_reason in ("stop", "length")
        _exact(r)
    # The buyer kept a checkable record of every segment, the killed provider's too.
    from market.ledger import Ledger
    from market.ledger.evidence import EvidenceStore
    from market.protocol.evidence import check_record

    ledger = Ledger(market.dir / "buyer" / "buyer-ledger.sqlite")
    try:
        store = EvidenceStore(ledger.db)
        for r in moved:
            rows = store.for_job(r.job_id)
            assert [row.evidence.provider for row in rows] == [s.peer_id for s in r.shares]
            assert sum((row.evidence.token_ids for row in rows), ()) == r.token_ids
            for row in rows:
                assert check_record(row.evidence) == [], row.evidence.provider
                assert row.evidence.prompt_message().params.seed is not None
    finally:
        ledger.close()


def test_settlement_matches_both_ledgers_with_concurrent_jobs(market: LocalMarket) -> None:
    """What the buyer signed on each channel = what the live provider holds = what the
    chain paid; the killed one is paid exactly what it held."""
    from market.ledger import Ledger

    market.drain()
    for name in ("dora", "eve"):
        if market.node(name).status().get("state") != "stopped":
            market.redeem_offline(name)
    dep = market.deployment
    hub = dep.hub(market.admin)
    buyer = market.ids["buyer"].eth_address
    buyer_ledger = Ledger(Path(market.dir / "buyer" / "buyer-ledger.sqlite"))
    signed = {sv.voucher.provider: sv.voucher.cumulative_amount for sv in buyer_ledger.vouchers()}
    paid_any = 0
    for name in ("dora", "eve"):
        ident = market.ids[name]
        ledger = Ledger(market.dir / name / "ledger.sqlite")
        held = {sv.voucher.buyer: sv.voucher.cumulative_amount for sv in ledger.vouchers()}
        redeemed, _ = hub.redeemed(buyer, ident.eth_address, dep.token)
        mine = held.get(bytes.fromhex(buyer[2:]), 0)
        assert redeemed == mine <= signed.get(ident.eth_address_bytes, 0)
        if market.node(name).popen.returncode == 0:  # drained cleanly: every voucher came
            assert mine == signed.get(ident.eth_address_bytes, 0)
        paid_any += redeemed
        ledger.close()
    assert paid_any > 0
