"""Log polling and calling the chain from trio through one limiter."""

from __future__ import annotations

import trio

from market.chain.aio import TrioChain
from market.chain.events import LogPoller
from tests.market.chain.conftest import Market


def test_log_poller_reads_each_event_once_in_small_ranges(market: Market) -> None:
    hub = market.hub(market.provider)
    start = market.admin.block_number()
    topic = b"\x00" * 12 + market.provider.address_bytes
    poller = LogPoller(
        market.admin,
        hub.contract,
        ["Redeemed"],
        from_block=start,
        max_range=1,
        topics=[None, topic],
    )
    assert poller.poll() == []
    hub.redeem(market.signed(10))
    hub.redeem(market.signed(30))
    market.hub(market.buyer).request_withdrawal(
        market.deployment.token, 5
    )  # another event: not selected
    events = poller.poll()
    assert [(e.name, e.args["amount"], e.args["cumulativeAmount"]) for e in events] == [
        ("Redeemed", 10, 10),
        ("Redeemed", 20, 30),
    ]
    assert poller.poll() == []


async def test_trio_chain_runs_calls_in_threads_and_watches(market: Market) -> None:
    chain = TrioChain()
    hub = market.hub(market.provider)
    poller = LogPoller(
        market.admin, hub.contract, ["Redeemed"], from_block=market.admin.block_number()
    )
    receipt = await chain.run(hub.redeem, market.signed(77))
    assert receipt.status == 1
    seen = []
    with trio.fail_after(30):
        async for event in chain.watch(poller, interval_s=0.01):
            seen.append(event)
            break
    assert seen[0].args["amount"] == 77
    # concurrent callers are serialised by the one limiter and all succeed
    results: list[int] = []

    async def read() -> None:
        results.append(
            await chain.run(hub.balance_of, market.buyer.address, market.deployment.token)
        )

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(read)
    assert len(results) == 4 and len(set(results)) == 1
    assert chain.limiter.total_tokens == 1
