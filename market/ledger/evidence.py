"""The buyer's kept evidence: one record per provider segment of a job, for a window.

Records are :class:`market.protocol.evidence.Evidence` in their canonical bytes, named
by their sha256 (``digest``, what a fraud report cites). They are kept for
``keep_s`` (a configurable window; :meth:`EvidenceStore.purge` drops older ones, and
never one that failed verification: that is kept until someone decides).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from market.protocol.evidence import Evidence

__all__ = ["EvidenceRow", "EvidenceStore"]

_TABLE = "evidence"
_DISTRUST = "distrusted"


@dataclass(frozen=True, slots=True)
class EvidenceRow:
    """One kept record and what is known of it."""

    digest: str
    evidence: Evidence
    created_at: float
    verdict: str  # "" (not checked), "ok", or the reason it failed


class EvidenceStore:
    """Evidence records in the buyer's ledger database (one table, ``evidence``)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        if _TABLE not in db.table_names():
            db[_TABLE].create(
                {
                    "digest": str,
                    "job_id": str,
                    "provider": str,
                    "model_id": str,
                    "tokens": int,
                    "created_at": float,
                    "record": bytes,
                    "verdict": str,
                },
                pk="digest",
            )
            db[_TABLE].create_index(["job_id"])
            db[_TABLE].create_index(["created_at"])
        if _DISTRUST not in db.table_names():
            db[_DISTRUST].create(
                {"provider": str, "reason": str, "evidence": str, "since": float}, pk="provider"
            )

    def put(self, ev: Evidence, *, now: float) -> str:
        """Keep ``ev``; returns its digest (hex). Keeping it twice changes nothing."""
        digest = ev.digest().hex()
        self.db[_TABLE].insert(
            {
                "digest": digest,
                "job_id": ev.job_id.hex(),
                "provider": ev.provider,
                "model_id": ev.model_id,
                "tokens": len(ev.token_ids),
                "created_at": now,
                "record": ev.encode(),
                "verdict": "",
            },
            ignore=True,
        )
        return digest

    def _row(self, r: dict[str, object]) -> EvidenceRow:
        record = r["record"]
        assert isinstance(record, bytes)
        return EvidenceRow(
            digest=str(r["digest"]),
            evidence=Evidence.decode(record),
            created_at=float(r["created_at"]),  # type: ignore[arg-type]
            verdict=str(r["verdict"] or ""),
        )

    def for_job(self, job_id: bytes | str) -> list[EvidenceRow]:
        """Every kept segment of one job, oldest first (``job_id`` as bytes or hex)."""
        key = job_id.hex() if isinstance(job_id, bytes) else job_id.lower()
        rows = self.db[_TABLE].rows_where("job_id = ?", [key], order_by="created_at")
        return [self._row(r) for r in rows]

    def get(self, digest: str) -> EvidenceRow | None:
        """The record named ``digest`` (hex), if kept."""
        rows = list(self.db[_TABLE].rows_where("digest = ?", [digest.lower()]))
        return self._row(rows[0]) if rows else None

    def set_verdict(self, digest: str, verdict: str) -> None:
        """Remember how a verification of ``digest`` came out (``"ok"`` or why not)."""
        self.db[_TABLE].update(digest, {"verdict": verdict[:500]})

    def purge(self, *, older_than: float) -> int:
        """Drop records created before ``older_than``, except failed ones; how many went."""
        cur = self.db.execute(
            f"DELETE FROM {_TABLE} WHERE created_at < ? AND verdict IN ('', 'ok')",
            [older_than],
        )
        return cur.rowcount

    def stats(self) -> tuple[int, int, int]:
        """(records, tokens, bytes) kept."""
        row = self.db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(tokens), 0), COALESCE(SUM(LENGTH(record)), 0)"
            f" FROM {_TABLE}"
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def distrust(self, provider: str, reason: str, *, evidence: str, now: float) -> None:
        """Route around ``provider`` from now on (it survives restarts)."""
        self.db[_DISTRUST].upsert(
            {"provider": provider, "reason": reason[:500], "evidence": evidence, "since": now},
            pk="provider",
        )

    def trust_again(self, provider: str) -> None:
        """Lift :meth:`distrust` (a second verifier did not confirm the first)."""
        self.db.execute(f"DELETE FROM {_DISTRUST} WHERE provider = ?", [provider])

    def distrusted(self) -> dict[str, str]:
        """Every provider routed around, with why."""
        return {str(r["provider"]): str(r["reason"]) for r in self.db[_DISTRUST].rows}
