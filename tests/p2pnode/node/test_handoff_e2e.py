"""A provider that left a job may take it back (CI, issue 15), with real processes.

The market's one homeowner ("hana", built in ``handoff_node.py``) hands every job off
after its first chunk, as a shed node does. The buyer has nobody else: it must go
back to the same provider, which resumes from the delivered tokens. Until the buyer
barred only providers at fault, it ignored hana's new bids and queued until its
deadline (CI: a SIGKILL left one provider, which had refused an award for want of a
slot earlier in the job; the job queued for 593 s).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from market.ledger import Ledger
from market.ledger.evidence import EvidenceStore
from market.protocol import cost_of
from market.protocol.evidence import check_record
from market.sdk.connect import load_buyer, open_buyer_client
from market.sdk.types import GenerationParams
from p2pnode.localnet import LocalMarket
from tests.p2pnode.node.patched import start_patched_node

MODEL = "SmolLM2-135M-Instruct"
NAME = "hana"
CHUNK = 4


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    m = LocalMarket(
        tmp_path_factory.mktemp("handoff"), node_extra=f"[market]\nchunk_tokens = {CHUNK}\n"
    )
    try:
        m.start_chain()
        m.add_identity("buyer", provider=False)
        m.start_bootstrap()
        start_patched_node(m, NAME, "handoff_node.py")
        yield m
    finally:
        m.stop()


async def test_the_only_provider_takes_back_the_job_it_handed_off(market: LocalMarket) -> None:
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:
        with trio.fail_after(90):
            while client.catalog.provider_count(trio.current_time()) < 1:
                await trio.sleep(0.2)
        job = client.generate(
            MODEL,
            messages=[{"role": "user", "content": "Describe a kitchen in two sentences."}],
            params=GenerationParams(max_tokens=40, temperature=0.0),
            timeout_s=90,
        )
        await job.text()
        r = job.result
    assert r.finish_reason in ("stop", "length") and r.failovers == 1
    (peer,) = {s.peer_id for s in r.shares}  # both parts on the one provider
    assert len(r.shares) == 2 and 1 <= r.shares[0].tokens <= CHUNK  # its first chunk
    assert r.completion_tokens == len(r.token_ids) == sum(s.tokens for s in r.shares)
    for share in r.shares:  # each part paid exactly for its own tokens
        assert share.amount == cost_of(share.tokens, share.price_per_1k)
    # Both parts are kept as evidence, each checkable on its own.
    ledger = Ledger(market.dir / "buyer" / "buyer-ledger.sqlite")
    try:
        rows = EvidenceStore(ledger.db).for_job(r.job_id)
        assert [row.evidence.provider for row in rows] == [peer, peer]
        assert [row.evidence.resume_offset for row in rows] == [0, r.shares[0].tokens]
        assert sum((row.evidence.token_ids for row in rows), ()) == r.token_ids
        for row in rows:
            assert check_record(row.evidence) == []
    finally:
        ledger.close()
    # The provider holds what the buyer signed it: the two parts' sum.
    node_ledger = Ledger(market.dir / NAME / "ledger.sqlite")
    try:
        with trio.fail_after(30):
            while True:
                held = [sv.voucher.cumulative_amount for sv in node_ledger.vouchers()]
                if held == [r.cost]:
                    break
                await trio.sleep(0.2)
    finally:
        node_ledger.close()
