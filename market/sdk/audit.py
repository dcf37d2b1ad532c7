"""The buyer checks what it bought, and acts on what it finds.

After each job the client hands its evidence records here (:meth:`Audit.consider`).
A record is verified (:class:`~market.sdk.verifier.Verifier`: another provider of the
model re-scores it, paid per token) when its provider is new to this buyer (its first
``verify_first`` records) or by a draw of rate ``verify_rate`` keyed by the record's
hash, always in the background, never delaying the buyer's stream.

* **A failed verification** keeps the evidence (its verdict is stored, and failed
  records are never purged) and drops the provider at once: its bids are ignored from
  then on (:meth:`Audit.distrusts`).
* **A second, independent verifier** (neither the provider nor the first verifier)
  then checks the same record. If it also fails the record, the failure is confirmed:
  the distrust is written to the ledger (it survives restarts) and a signed
  :class:`~market.protocol.messages.FraudReport` goes out on gossip. If it passes, the
  first verifier may be the one lying: the provider is trusted again.
* **Another buyer's report** is never trusted alone: the client fetches the record
  from the reporter by its hash (``/hearth/evidence/1``), checks the provider's
  signature and hash chain (:func:`~market.protocol.evidence.check_record`), has it
  verified by two verifiers of its own choosing, and only if both fail it routes
  around the provider. A forged report against an honest provider therefore changes
  nothing. A provider this buyer routes around is never asked to verify either.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from market.ledger.evidence import EvidenceStore
from market.protocol import RemoteProtocolError
from market.protocol.evidence import Evidence, check_record
from market.protocol.messages import EvidenceRecord, EvidenceRequest, FraudReport
from market.sdk.verifier import Checked, Verifier, VerifyError
from market.streams import (
    EVIDENCE_PROTOCOL,
    open_sealed,
    receive_message,
    sealed,
    send_message,
)
from p2pnode.net import NetError
from p2pnode.net.framing import FramedStream
from p2pnode.net.pubsub import GossipMessage, fraud_topic

if TYPE_CHECKING:
    from market.sdk.client import Client

__all__ = ["Audit", "fraud_check"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def fraud_check(data: bytes, origin: str) -> None:
    """Gossip check of the fraud topic: a FraudReport sealed by its own reporter."""
    report, sender = open_sealed(data)
    if not isinstance(report, FraudReport) or report.reporter != sender or sender != origin:
        raise RemoteProtocolError("the fraud topic carries only reports sealed by their reporter")


class Audit:
    """Sampled verification and its consequences, for one buyer client."""

    def __init__(self, client: Client, verifier: Verifier | None = None) -> None:
        self.client = client
        self.verifier = verifier if verifier is not None else Verifier(client)
        self.config = client.config
        self._distrusted: dict[str, str] = {}
        self._checked: Counter[str] = Counter()  # records sampled, per provider
        self._reports_seen: set[bytes] = set()
        self.verified = 0
        self.failed = 0
        self.reports_sent = 0
        self.reports_confirmed = 0
        self.reports_rejected = 0
        self.errors: list[str] = []

    # ----------------------------------------------------------------- state
    def distrusts(self, provider: str) -> str | None:
        """Why ``provider`` is routed around, or None."""
        return self._distrusted.get(provider)

    def distrusted(self) -> set[str]:
        """Every provider routed around (never asked to verify either)."""
        return set(self._distrusted)

    async def _store(self, fn: Callable[[EvidenceStore], T]) -> T | None:
        """``fn(store)`` on the ledger's evidence store, off the event loop (``None``
        without a ledger)."""
        ledger = self.client.ledger
        if ledger is None:
            return None

        def run() -> T:
            return fn(EvidenceStore(ledger.db))

        return await trio.to_thread.run_sync(run, limiter=self.client._ledger_limiter)

    async def load(self) -> None:
        """Take back the providers an earlier run routed around."""
        found = await self._store(lambda store: store.distrusted())
        if found is not None:
            self._distrusted.update(found)

    # ----------------------------------------------------------------- sampling
    def sample(self, ev: Evidence) -> bool:
        """Verify ``ev``? A new provider's first records always; then at ``verify_rate``."""
        if self.config.verify_rate <= 0 and self.config.verify_first <= 0:
            return False
        if self._checked[ev.provider] < self.config.verify_first:
            return True
        draw = int.from_bytes(ev.digest()[:8], "big") / 2.0**64
        return draw < self.config.verify_rate

    def consider(self, records: list[Evidence]) -> None:
        """Start a background check of each sampled record (never awaited by a job)."""
        for ev in records:
            if self.sample(ev):
                self._checked[ev.provider] += 1
                self.client._nursery.start_soon(self._audit, ev)

    async def _audit(self, ev: Evidence) -> None:
        digest = ev.digest().hex()
        try:
            first = await self.verifier.check(ev, avoid=set())
        except VerifyError as exc:
            self.errors.append(f"{digest[:12]}: {exc}")
            return
        self.verified += 1
        if first.verdict.ok:
            await self._store(lambda store: store.set_verdict(digest, "ok"))
            return
        self.failed += 1
        why = f"verification failed ({first.verifier[-8:]}): {first.verdict.detail}"
        self._distrusted[ev.provider] = why  # the floor at once, before any confirmation
        await self._store(lambda store: store.set_verdict(digest, why))
        try:
            second = await self.verifier.check(ev, avoid={first.verifier})
        except VerifyError as exc:
            self.errors.append(f"{digest[:12]}: no second verifier: {exc}")
            return  # unconfirmed: the floor stays for this run, nothing more happens
        if second.verdict.ok:
            self._distrusted.pop(ev.provider, None)  # disputed: the first may be the liar
            await self._store(lambda store: store.set_verdict(digest, f"disputed: {why}"))
            return
        confirmed = f"{why}; confirmed ({second.verifier[-8:]}): {second.verdict.detail}"
        await self._confirmed(ev, confirmed, (first, second))

    async def _confirmed(self, ev: Evidence, why: str, by: tuple[Checked, Checked]) -> None:
        digest = ev.digest()
        self._distrusted[ev.provider] = why
        now = time.time()

        def keep(store: EvidenceStore) -> None:
            store.set_verdict(digest.hex(), why)
            store.distrust(ev.provider, why, evidence=digest.hex(), now=now)

        await self._store(keep)
        report = FraudReport(
            provider=ev.provider,
            model_id=ev.model_id,
            evidence=digest,
            reporter=self.client.key.peer_id,
            verifiers=tuple(c.verifier for c in by),
            verdict=why[:300],
        )
        try:
            await self.client.net.publish(fraud_topic(), sealed(report, self.client.key))
            self.reports_sent += 1
        except NetError as exc:
            self.errors.append(f"fraud report not published: {exc}")

    # ----------------------------------------------------------------- others' reports
    async def watch_reports(self, channel: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        """Re-check each report seen on gossip (one at a time: a flood costs one check)."""
        async for msg in channel:
            try:
                report, _ = open_sealed(msg.data)
            except RemoteProtocolError:
                continue
            if not isinstance(report, FraudReport) or report.evidence in self._reports_seen:
                continue
            if len(self._reports_seen) > 10_000:
                self._reports_seen.clear()
            self._reports_seen.add(report.evidence)
            if report.provider in self._distrusted or report.reporter == self.client.key.peer_id:
                continue
            with trio.move_on_after(120):
                await self._recheck(report)

    async def _recheck(self, report: FraudReport) -> None:
        try:
            ev = await self._fetch(report)
        except (NetError, RemoteProtocolError, VerifyError) as exc:
            self.reports_rejected += 1
            logger.info("fraud report on %s: evidence unusable: %s", report.provider, exc)
            return
        # Two verifiers of our own choosing must both fail it, as for our own records:
        # one verifier alone could be a cheat framing an honest provider.
        try:
            mine = await self.verifier.check(ev, avoid={report.reporter})
            if not mine.verdict.ok:
                second = await self.verifier.check(ev, avoid={report.reporter, mine.verifier})
                if second.verdict.ok:
                    mine = second
        except VerifyError as exc:
            self.errors.append(f"report on {report.provider[-8:]}: {exc}")
            return
        if mine.verdict.ok:
            self.reports_rejected += 1  # a verifier of ours found nothing wrong
            return
        self.reports_confirmed += 1
        why = f"fraud report by {report.reporter[-8:]} re-verified ({mine.verifier[-8:]}): {mine.verdict.detail}"
        self._distrusted[report.provider] = why
        now = time.time()

        def keep(store: EvidenceStore) -> None:
            store.put(ev, now=now)
            store.set_verdict(ev.digest().hex(), why)
            store.distrust(report.provider, why, evidence=ev.digest().hex(), now=now)

        await self._store(keep)

    async def _fetch(self, report: FraudReport) -> Evidence:
        """The record a report names, from its reporter, checked before anything else."""
        async with self.client.net.open_stream(report.reporter, EVIDENCE_PROTOCOL, timeout=5) as fs:
            await send_message(fs, EvidenceRequest(evidence=report.evidence), self.client.key)
            answer = await receive_message(fs, self.client._guard, timeout=10)
        if not isinstance(answer, EvidenceRecord) or answer.evidence != report.evidence:
            raise VerifyError("the reporter did not send the record it reported")
        ev = Evidence.decode(answer.record)
        if ev.digest() != report.evidence:
            raise VerifyError("the record does not hash to the reported digest")
        if ev.provider != report.provider or ev.model_id != report.model_id:
            raise VerifyError("the record is about another provider or model")
        problems = check_record(ev)
        if problems:
            raise VerifyError("the record's signature or chain fails: " + "; ".join(problems))
        return ev

    async def serve_evidence(self, fs: FramedStream) -> None:
        """``/hearth/evidence/1``: the records we reported (and only those) to who asks."""
        req = await receive_message(fs, self.client._guard, timeout=10)
        if not isinstance(req, EvidenceRequest):
            raise RemoteProtocolError("an evidence stream must open with an EvidenceRequest")
        digest = req.evidence.hex()
        row = await self._store(lambda store: store.get(digest))
        if row is None or row.verdict in ("", "ok"):
            raise RemoteProtocolError("no reported record by that hash")
        record = row.evidence.encode()
        await send_message(
            fs, EvidenceRecord(evidence=req.evidence, record=record), self.client.key
        )
