"""A power shed with real processes: the shed node's running job finishes on a runner-up.

Its own market (fresh nodes), so nothing earlier tests did to the network affects it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from market.protocol import cost_of
from market.sdk.connect import load_buyer, open_buyer_client
from market.sdk.types import GenerationParams
from p2pnode.localnet import LocalMarket
from tests.p2pnode.node.test_market_e2e import MODEL, _client_ready, _live, running_market


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    with running_market(tmp_path_factory.mktemp("power-market")) as m:
        yield m


async def test_power_shed_mid_stream_hands_the_job_to_a_runner_up(market: LocalMarket) -> None:
    """The house needs the power: the serving node drains and its job finishes elsewhere."""
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:
        await _client_ready(client, _live(market))
        job = client.generate(
            MODEL,
            messages=[{"role": "user", "content": "Tell a long story about a lighthouse."}],
            params=GenerationParams(max_tokens=48),
        )
        shed = ""
        seen = 0
        async for chunk in job:
            seen += 1
            if seen == 2:
                shed = market.name_of(chunk.provider)
                market.override_power(shed, "draining")
        r = job.result
    assert shed and market.node(shed).alive()  # shed, not crashed
    assert market.name_of(r.shares[0].peer_id) == shed
    assert r.failovers >= 1 and market.name_of(r.shares[-1].peer_id) != shed
    assert r.completion_tokens == sum(s.tokens for s in r.shares)
    for share in r.shares:
        assert share.amount == cost_of(share.tokens, share.price_per_1k)
    with trio.fail_after(20):  # the shed node drains (then idles: off) and stops bidding
        while market.node(shed).status().get("power", {}).get("state") not in ("draining", "off"):
            await trio.sleep(0.2)
    market.override_power(shed, "auto")
