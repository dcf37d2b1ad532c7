"""Verified inference through the market (issue 16), with real node processes.

Three honest homeowners and one cheater ("mallory": the real node serving an int8
round-trip of the weights while its offers state the original content address, built
in ``cheating_node.py``). Buyer A's sampled verification catches the cheater, a second
verifier confirms, A routes around it and reports it; buyer B, who never bought from
it, re-verifies A's evidence itself before routing around it too; a forged report
against an honest provider changes nothing; and A still distrusts the cheater after a
restart.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from market.ledger import Ledger
from market.ledger.evidence import EvidenceStore
from market.protocol.messages import FraudReport
from market.sdk.connect import load_buyer, open_buyer_client
from market.sdk.types import GenerationParams
from market.streams import sealed
from p2pnode.localnet import LocalMarket
from p2pnode.net.pubsub import fraud_topic
from tests.p2pnode.node.patched import start_patched_node

MODEL = "SmolLM2-135M-Instruct"
HONEST = ("alice", "bob", "carol")
CHEATER = "mallory"


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    m = LocalMarket(tmp_path_factory.mktemp("verify"), node_extra="[market]\nchunk_tokens = 8\n")
    try:
        m.stand_up(HONEST)
        start_patched_node(m, CHEATER, "cheating_node.py")
        m.add_identity("buyer2", provider=False)
        m.add_identity("forger", provider=False)
        yield m
    finally:
        m.stop()


async def _ready(client: Any, n: int) -> None:
    with trio.fail_after(90):
        while client.catalog.provider_count(trio.current_time()) < n:
            await trio.sleep(0.2)


async def _job(client: Any, i: int) -> Any:
    job = client.generate(
        MODEL,
        messages=[{"role": "user", "content": f"Write a sentence about a house, number {i}."}],
        params=GenerationParams(max_tokens=24, temperature=0.8),
    )
    await job.text()
    return job.result


async def test_a_cheater_is_caught_routed_around_reported_and_re_verified(
    market: LocalMarket,
) -> None:
    mallory = market.node(CHEATER).peer_id
    setup_a = load_buyer(market.config_for("buyer"), market.env)
    setup_b = load_buyer(market.config_for("buyer2"), market.env)
    async with (
        open_buyer_client(setup_a) as a,
        open_buyer_client(setup_b) as b,
    ):
        await _ready(a, 4)
        await _ready(b, 4)
        served_by_cheater = 0
        cheated: list[str] = []
        with trio.move_on_after(300):
            i = 0
            while a.audit.reports_sent == 0 and i < 60:
                r = await _job(a, i)
                i += 1
                served_by_cheater += r.shares[-1].peer_id == mallory
                if r.shares[-1].peer_id == mallory:
                    cheated.append(r.job_id)
                if a.audit.distrusts(mallory) is None:
                    continue
                with trio.move_on_after(60):  # the second verifier's confirmation
                    while a.audit.reports_sent == 0:
                        await trio.sleep(0.2)
        state = (
            f"{i} jobs, {served_by_cheater} on the cheater; verified {a.audit.verified}, "
            f"failed {a.audit.failed}, reports {a.audit.reports_sent}, errors {a.audit.errors}"
        )
        assert a.audit.reports_sent >= 1, state  # each failed record it confirmed is reported
        print(
            f"\ncheater_jobs_served before buyer A routed around it: {served_by_cheater} ({state})"
        )
        assert served_by_cheater >= 1
        assert "verification failed" in (a.audit.distrusts(mallory) or "")
        # A routes around it from now on
        for k in range(6):
            r = await _job(a, 100 + k)
            assert all(s.peer_id != mallory for s in r.shares)
        # B re-verified A's evidence itself before believing the report
        with trio.fail_after(120):
            while b.audit.distrusts(mallory) is None:
                await trio.sleep(0.2)
        assert "re-verified" in (b.audit.distrusts(mallory) or "")
        assert b.audit.reports_confirmed >= 1
        for k in range(4):
            r = await _job(b, 200 + k)
            assert all(s.peer_id != mallory for s in r.shares)
        assert a.audit.verified >= 2 and a.audit.failed >= 1

        # A forged report against an honest provider: the forger serves an honest record.
        # (The cheater is stopped first: the forger, new here, would still route to it.)
        await trio.to_thread.run_sync(market.kill, mallory)
        setup_f = load_buyer(market.config_for("forger"), market.env)
        async with open_buyer_client(setup_f, verify_first=0, verify_rate=0.0) as forger:
            await _ready(forger, len(HONEST))  # the cheater is gone
            for k in range(12):  # a job of the forger's that an honest node served
                honest = await _job(forger, 300 + k)
                victim = honest.shares[-1].peer_id
                if victim != mallory:
                    break
            assert victim in {market.node(n).peer_id for n in HONEST}
            ledger = forger.ledger
            assert ledger is not None
            store = EvidenceStore(ledger.db)
            (row,) = [x for x in store.for_job(honest.job_id) if x.evidence.provider == victim]
            store.set_verdict(row.digest, "forged: claims a failure")  # so it is served
            before = b.audit.reports_rejected
            report = FraudReport(
                provider=victim,
                model_id=row.evidence.model_id,
                evidence=bytes.fromhex(row.digest),
                reporter=forger.key.peer_id,
                verifiers=(mallory, market.node("bob").peer_id),
                verdict="made up",
            )
            with trio.fail_after(60):
                while b.audit.reports_rejected == before:
                    await forger.net.publish(fraud_topic(), sealed(report, forger.key))
                    await trio.sleep(2)
            assert b.audit.distrusts(victim) is None
            assert a.audit.distrusts(victim) is None
    # `hearth verify JOB_ID` re-checks a kept job token by token, through the market
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2pnode.cli.app",
            "verify",
            cheated[0],
            "--config",
            str(market.dir / "buyer" / "hearth.toml"),
        ],
        capture_output=True,
        text=True,
        env=market.env,
        timeout=180,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "signature / chain: ok" in out.stdout  # it signed what it sent: that is the proof
    assert "FAILED" in out.stdout and "claimed_lp" in out.stdout, out.stdout
    # The distrust survives a restart (it is in A's ledger)
    async with open_buyer_client(setup_a) as again:
        assert again.audit.distrusts(mallory) is not None
    ledger = Ledger(market.dir / "buyer" / "buyer-ledger.sqlite")
    try:
        failed = [
            r
            for r in EvidenceStore(ledger.db).distrusted().items()
            if r[0] == mallory and "confirmed" in r[1]
        ]
        assert failed, "the confirmed failure was not kept"
    finally:
        ledger.close()
