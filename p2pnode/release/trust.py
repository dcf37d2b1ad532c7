"""The trust store: which publishers a node trusts, and the last release it trusted of each model.

A node lists its trusted publishers (ed25519 public keys, from its config) and keeps,
per (publisher, model name), the last manifest it accepted. :meth:`TrustStore.accept`
refuses, each with its own :mod:`~p2pnode.release.errors` type and a message that says
what was wrong and what was expected, checking cheapest first:

1. bytes that are not a release manifest (:class:`MalformedRelease`);
2. a publisher not in the trusted list (:class:`UnknownPublisher`);
3. a signature that does not verify (:class:`BadSignature`);
4. an expired manifest, or one created more than :data:`MAX_CLOCK_SKEW_S` in the
   future (:class:`ExpiredRelease`);
5. a version below the last trusted one (:class:`Rollback`);
6. the last trusted version again with other content (:class:`ConflictingRelease`: a
   freeze or mix attack; TUF's rule that a version is signed once);
7. given a ``directory``: files, sizes, chunk hashes or a content address that are not
   the manifest's (:class:`ContentMismatch`, :func:`~p2pnode.release.manifest.check_directory`).

Only then is the release stored, replacing the older one: a refusal stores nothing. The
same release accepted twice is stored once. The last trusted manifest stays when it
expires, so an expired release can never be rolled back to either.

**Storage.** One SQLite file (sqlite-utils, WAL, as the ledgers): a row per (publisher,
name) holding the version, content address, digest, times and the signed bytes. SQLite
rather than a JSON file because the comparison with the stored version and the write
happen in one ``BEGIN IMMEDIATE`` transaction: two processes (a node and
``hearth model fetch``) accepting releases at once cannot interleave a rollback between
the check and the write, and a crash mid-write leaves the last committed row. The swarm
transfer will keep its per-chunk download progress in the same file.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from p2pnode.release.errors import (
    ConflictingRelease,
    ExpiredRelease,
    Rollback,
    UnknownPublisher,
)
from p2pnode.release.keys import parse_publisher_key
from p2pnode.release.manifest import SignedRelease, check_directory, decode_release

__all__ = ["MAX_CLOCK_SKEW_S", "TRUST_STORE_FILE", "TrustStore", "TrustedRelease"]

#: The trust store's file name in a node's data_dir.
TRUST_STORE_FILE = "releases.sqlite"
#: How far in the future a manifest's created_at may be (publishers' clocks drift).
MAX_CLOCK_SKEW_S = 300
_TABLE = "releases"


@dataclass(frozen=True, slots=True)
class TrustedRelease:
    """A stored release and when this node accepted it (unix seconds)."""

    release: SignedRelease
    accepted_at: float


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class TrustStore:
    """Trusted publishers and the last trusted release of each of their models.

    ``path`` is the SQLite file (``":memory:"`` for a test); ``trusted`` the publishers'
    public keys (32 bytes, or 64 hex digits).
    """

    def __init__(self, path: str | Path, trusted: Iterable[str | bytes]) -> None:
        self.trusted = frozenset(parse_publisher_key(k) for k in trusted)
        self.path = str(path)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE in accept).
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        if self.path != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA busy_timeout = 10000")
        if _TABLE not in self.db.table_names():
            self.db.table(_TABLE).create(
                {
                    "publisher": str,
                    "name": str,
                    "version": int,
                    "content_address": str,
                    "digest": str,
                    "created_at": int,
                    "expires_at": int,
                    "accepted_at": float,
                    "signed": bytes,
                },
                pk=("publisher", "name"),
                if_not_exists=True,
            )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TrustStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- checking
    def check(
        self, data: bytes, *, now: float | None = None, directory: Path | None = None
    ) -> SignedRelease:
        """Every rule of :meth:`accept`, storing nothing; the release if it passes."""
        now = time.time() if now is None else now
        release = self._vet(data, now)
        self._against(self._stored(release), release)
        if directory is not None:
            check_directory(release.manifest, directory)
        return release

    def accept(
        self, data: bytes, *, now: float | None = None, directory: Path | None = None
    ) -> SignedRelease:
        """Check ``data`` (a release file's bytes) and keep it as the last trusted release
        of its model; raise the refusal's :class:`~p2pnode.release.errors.ReleaseError`
        otherwise, storing nothing."""
        now = time.time() if now is None else now
        release = self.check(data, now=now, directory=directory)
        m = release.manifest
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored = self._stored(release)  # again, under the write lock
            self._against(stored, release)
            if stored is None or stored["digest"] != release.digest:
                conn.execute(
                    f"INSERT OR REPLACE INTO {_TABLE} (publisher, name, version, "
                    "content_address, digest, created_at, expires_at, accepted_at, signed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        m.publisher.hex(),
                        m.name,
                        m.version,
                        m.content_address,
                        release.digest,
                        m.created_at,
                        m.expires_at,
                        now,
                        release.encode(),
                    ),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return release

    def _vet(self, data: bytes, now: float) -> SignedRelease:
        release = decode_release(data)
        m = release.manifest
        if m.publisher not in self.trusted:
            known = ", ".join(sorted(k.hex()[:16] + "…" for k in self.trusted)) or "none"
            raise UnknownPublisher(
                f"{m.label()} is signed by {m.publisher.hex()}, which is not a trusted "
                f"publisher: expected one of the keys this node trusts ({known})"
            )
        release.verify()
        if now >= m.expires_at:
            raise ExpiredRelease(
                f"{m.label()} expired at {_when(m.expires_at)}; now is {_when(now)}: "
                "expected a manifest within its validity window (ask the publisher for a "
                "newer or re-signed one)"
            )
        if m.created_at > now + MAX_CLOCK_SKEW_S:
            raise ExpiredRelease(
                f"{m.label()} is dated {_when(m.created_at)}, in the future (now is "
                f"{_when(now)}): expected a creation time at most {MAX_CLOCK_SKEW_S} s ahead"
            )
        return release

    def _stored(self, release: SignedRelease) -> dict[str, Any] | None:
        m = release.manifest
        rows = list(
            self.db.query(
                f"SELECT version, digest FROM {_TABLE} WHERE publisher = ? AND name = ?",
                (m.publisher.hex(), m.name),
            )
        )
        return rows[0] if rows else None

    @staticmethod
    def _against(stored: dict[str, Any] | None, release: SignedRelease) -> None:
        if stored is None:
            return
        m = release.manifest
        if m.version < stored["version"]:
            raise Rollback(
                f"{m.label()} is older than the trusted {m.name} v{stored['version']}: "
                f"expected version {stored['version']} or above (a rollback)"
            )
        if m.version == stored["version"] and release.digest != stored["digest"]:
            raise ConflictingRelease(
                f"{m.label()} (manifest {release.digest[:16]}…) is not the {m.label()} "
                f"already trusted (manifest {stored['digest'][:16]}…): a version is signed "
                f"once; expected that same manifest or a version above {m.version} (a "
                "freeze or mix attack, or a publisher who signed two releases as one)"
            )

    # ------------------------------------------------------------------ reading
    def latest(self, publisher: str | bytes, name: str) -> SignedRelease | None:
        """The last trusted release of ``name`` by ``publisher``, or ``None``."""
        rows = list(
            self.db.query(
                f"SELECT signed FROM {_TABLE} WHERE publisher = ? AND name = ?",
                (parse_publisher_key(publisher).hex(), name),
            )
        )
        return decode_release(rows[0]["signed"]) if rows else None

    def releases(self) -> list[TrustedRelease]:
        """Every stored release, by model name then publisher."""
        rows = self.db.query(f"SELECT signed, accepted_at FROM {_TABLE} ORDER BY name, publisher")
        return [TrustedRelease(decode_release(r["signed"]), r["accepted_at"]) for r in rows]
