"""Fetching a release from the swarm: several peers at once, every chunk verified.

:class:`Fetcher` fills a :class:`~p2pnode.release.store.LocalRelease` from the peers
that hold any of it (found under :func:`~p2pnode.release.swarm.release_key` in the
DHT, plus any the caller names). Each peer gets ``per_peer`` request streams; each
stream asks for one chunk at a time:

* the chunk is the rarest among what that peer has and we lack (by the peers'
  have-maps, refreshed every ``refresh_s``), ties broken by a random order of our
  own, so peers starting together fetch different chunks and trade them;
* a peer that holds the whole release (a seed) is asked only for chunks no partial
  holder has: the swarm makes the copies, the seed's uplink gives each chunk out
  about once (and the seed itself refuses to hand a chunk out twice in a row while
  others were never given: ``spread``);
* a chunk is checked against the signed manifest before it is written; a peer that
  sends a wrong one, or denies holding a chunk its have-map claims, is dropped for the
  rest of the fetch;
* a failing peer is left alone for a moment, then asked again; a peer that answers
  ``busy`` rests twice as long each time in a row (up to 30 s), and while a partial
  holder rests the seeds serve its chunks, so a peer that advertises chunks and never
  gives them cannot stall a fetch; a chunk a seed refused with ``spread`` is asked of
  it again only after half a second, its other chunks first.

What was written survives a ``kill -9``: a new :class:`Fetcher` on the same store
asks only for the chunks not marked held, so a restart re-fetches at most the chunks
that were in flight, one per request stream.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from p2pnode.net import NetError
from p2pnode.net.framing import FramedStream
from p2pnode.net.host import NodeNet
from p2pnode.release.errors import ChunkMismatch, ReleaseError
from p2pnode.release.manifest import SignedRelease
from p2pnode.release.store import LocalRelease
from p2pnode.release.swarm import (
    RELEASE_PROTOCOL,
    SwarmError,
    name_key,
    receive_payload,
    release_key,
    request,
)
from p2pnode.release.trust import TrustStore

__all__ = ["FetchStats", "Fetcher", "announce", "holders", "resolve"]


@dataclass
class _Peer:
    peer_id: str
    have: bytearray | None = None  # one byte per chunk, like LocalRelease.have
    complete: bool = False
    resting_until: float = 0.0
    busy_streak: int = 0  # "busy" answers in a row: each one rests it twice as long
    deferred: dict[int, float] = field(default_factory=dict)  # "spread": chunk -> ask again at
    bad: str = ""  # why it is dropped for good
    received: int = 0  # bytes we took from it


@dataclass
class FetchStats:
    """What a fetch did (for progress lines, the benchmark and the closing summary)."""

    started: float = field(default_factory=time.monotonic)
    fetched_bytes: int = 0  # verified and written by this fetch
    rejected_chunks: int = 0
    by_peer: dict[str, int] = field(default_factory=dict)


class Fetcher:
    """Fill ``local`` from the swarm (see the module docstring)."""

    def __init__(
        self,
        net: NodeNet,
        local: LocalRelease,
        *,
        peers: Callable[[], Awaitable[list[str]]] | None = None,
        per_peer: int = 2,
        refresh_s: float = 0.5,
        rest_s: float = 1.0,
        progress: Callable[[FetchStats, LocalRelease], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if per_peer < 1 or not refresh_s > 0:
            raise ValueError("per_peer must be >= 1 and refresh_s > 0")
        self.net = net
        self.local = local
        self.find_peers = peers
        self.per_peer = per_peer
        self.refresh_s = refresh_s
        self.rest_s = rest_s
        self.progress = progress
        self.rng = rng or random.Random()
        self.order = list(range(local.total))
        self.rng.shuffle(self.order)
        self.rank = {c: k for k, c in enumerate(self.order)}
        self.peers: dict[str, _Peer] = {}
        self.in_flight: set[int] = set()
        self.rarity = [0] * local.total  # partial holders of each chunk
        self.stats = FetchStats()
        self._changed = trio.Event()

    def add_peer(self, peer_id: str) -> None:
        if peer_id != self.net.peer_id and peer_id not in self.peers:
            self.peers[peer_id] = _Peer(peer_id)

    async def run(self, *, stall_s: float | None = None) -> FetchStats:
        """Fetch until every chunk is held; returns what this fetch did.

        Raises :class:`SwarmError` (``stalled``) when no new chunk came for ``stall_s``
        seconds (no peer holds the rest, or none answers); what was written stays.
        """
        stalled = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._discover)
            started: set[str] = set()
            mark, since = self.local.held, time.monotonic()
            while not self.local.complete:
                now = time.monotonic()
                if self.local.held != mark:
                    mark, since = self.local.held, now
                elif stall_s is not None and now - since > stall_s:
                    stalled = True
                    break
                for p in list(self.peers.values()):
                    if p.peer_id not in started and not p.bad:
                        started.add(p.peer_id)
                        nursery.start_soon(self._watch, p)
                        for _ in range(self.per_peer):
                            nursery.start_soon(self._worker, p)
                with trio.move_on_after(self.refresh_s):
                    await self._changed.wait()
                self._changed = trio.Event()
            nursery.cancel_scope.cancel()
        if stalled:
            local = self.local
            raise SwarmError(
                "stalled",
                f"no new chunk for {stall_s:.0f} s from {len(self.peers)} known peer(s); "
                f"{local.held} of {local.total} chunks held (run again to resume)",
            )
        return self.stats

    # ------------------------------------------------------------------ peers
    async def _discover(self) -> None:
        while self.find_peers is not None:
            try:
                for peer in await self.find_peers():
                    self.add_peer(peer)
            except Exception:  # discovery is best effort: the known peers go on
                pass
            self._changed.set()
            await trio.sleep(2.0)

    async def _watch(self, p: _Peer) -> None:
        """Keep ``p``'s have-map fresh (one stream, a request every ``refresh_s``)."""
        while not p.bad:
            try:
                async with self.net.open_stream(p.peer_id, RELEASE_PROTOCOL, timeout=5) as fs:
                    while not p.bad:
                        head = await request(fs, {"op": "have", "digest": self.local.digest})
                        self._set_have(p, head.get("have"))
                        self._changed.set()
                        await trio.sleep(self.refresh_s)
            except (NetError, SwarmError):
                self._forget(p)  # until it answers again, we count on nothing it had
                await trio.sleep(self.rest_s)

    def _forget(self, p: _Peer) -> None:
        if p.have is not None and not p.complete:
            for i, h in enumerate(p.have):
                self.rarity[i] -= h
        p.have, p.complete = None, False

    def _set_have(self, p: _Peer, bits: object) -> None:
        n = self.local.total
        if p.bad or not isinstance(bits, bytes) or len(bits) != (n + 7) // 8:
            return  # (a map of a dropped peer's, arriving late, counts for nothing)
        have = bytearray((bits[i >> 3] >> (7 - (i & 7))) & 1 for i in range(n))
        self._forget(p)
        p.have, p.complete = have, all(have)
        if not p.complete:
            for i, h in enumerate(have):
                self.rarity[i] += h

    # ------------------------------------------------------------------ chunks
    def _pick(self, p: _Peer) -> int | None:
        """The chunk to ask ``p`` for next (see the module docstring), or ``None``."""
        have, local = p.have, self.local
        if have is None:
            return None
        best: tuple[int, int] | None = None
        choice = None
        now = time.monotonic()
        for c in self.order:
            if local.have[c] or c in self.in_flight or not have[c]:
                continue
            if p.deferred.get(c, 0.0) > now:
                continue  # the seed said "spread" for it: ask it for the others first
            rarity = self.rarity[c]
            if p.complete and rarity > 0 and self._partial_holder(c, now):
                continue  # a partial holder has it: the swarm, not the seed, copies it
            key = (rarity, self.rank[c])
            if best is None or key < best:
                best, choice = key, c
                if rarity <= 1 and not p.complete:
                    break  # only this peer (or nobody partial) has it: as rare as it gets
        return choice

    def _partial_holder(self, c: int, now: float) -> bool:
        """Some partial holder of chunk ``c`` may be asked for it now (not resting after
        a refusal, not dropped): a peer that stays busy does not keep seeds from it."""
        return any(
            q.have is not None and q.have[c] and not q.complete and not q.bad
            and q.resting_until <= now
            for q in self.peers.values()
        )  # fmt: skip

    async def _worker(self, p: _Peer) -> None:
        while not self.local.complete and not p.bad:
            now = time.monotonic()
            if p.resting_until > now:
                await trio.sleep(p.resting_until - now)
                continue
            if self._pick(p) is None:
                with trio.move_on_after(self.refresh_s):
                    await self._changed.wait()
                continue
            try:
                async with self.net.open_stream(p.peer_id, RELEASE_PROTOCOL, timeout=5) as fs:
                    while not self.local.complete and not p.bad:
                        c = self._pick(p)
                        if c is None:
                            break
                        await self._one(p, fs, c)
            except (NetError, SwarmError) as e:
                code = e.code if isinstance(e, SwarmError) else "net"
                if code == "busy":  # again and again: rest ever longer (up to 30 s)
                    p.busy_streak += 1
                    rest = min(30.0, self.rest_s * 2 ** min(p.busy_streak - 1, 8))
                    p.resting_until = time.monotonic() + rest
                elif code != "spread":  # (a spread refusal defers the chunk, not the peer)
                    p.resting_until = time.monotonic() + self.rest_s

    async def _one(self, p: _Peer, fs: FramedStream, c: int) -> None:
        self.in_flight.add(c)
        try:
            try:
                head = await request(fs, {"op": "chunk", "digest": self.local.digest, "i": c})
            except SwarmError as e:
                if e.code == "spread":
                    p.deferred[c] = time.monotonic() + 0.5
                if e.code == "not_held" and p.have is not None and p.have[c]:
                    # a holder never loses a chunk: its map lied (or it let the release
                    # go), and the chunks it claims would never be asked of a seed
                    p.bad = f"advertised chunk {c}, then said it does not hold it"
                    self._forget(p)
                raise
            if head.get("size") != self.local.length(c):  # before a byte of it is read
                p.bad = f"announced chunk {c} as {head.get('size')!r} bytes"
                self._forget(p)
                return
            data = await receive_payload(fs, head)
            try:
                fresh = await trio.to_thread.run_sync(self.local.write, c, data)
            except ChunkMismatch as e:
                self.stats.rejected_chunks += 1
                p.bad = f"sent a chunk that is not the release's: {e}"
                self._forget(p)
                return
            p.busy_streak = 0
            if fresh:
                n = len(data)
                p.received += n
                self.stats.fetched_bytes += n
                self.stats.by_peer[p.peer_id] = self.stats.by_peer.get(p.peer_id, 0) + n
                if self.progress is not None:
                    self.progress(self.stats, self.local)
                self._changed.set()
        finally:
            self.in_flight.discard(c)


# ---------------------------------------------------------------------- finding a release
async def holders(net: NodeNet, key: str, limit: int = 20) -> list[str]:
    """Peers announced under ``key`` (DHT and rendezvous), and connected peers that
    might serve releases: an answer of theirs is checked like any other."""
    found: list[str] = []
    with trio.move_on_after(10):
        found = await net.find_providers(key, limit)
    return list(dict.fromkeys([*found, *net.connected_peers()]))[: 4 * limit]


async def announce(net: NodeNet, release: SignedRelease) -> None:
    """Tell the swarm we hold (some of) ``release``: by its digest and its model name."""
    await net.provide(release_key(release.digest))
    await net.provide(name_key(release.manifest.name))


async def resolve(
    net: NodeNet,
    trust: TrustStore,
    name: str,
    version: int | None = None,
    *,
    now: float | None = None,
) -> SignedRelease:
    """The release of model ``name`` to fetch: ``version``, or the newest the peers
    offer, among those ``trust`` accepts (a trusted publisher's signature, unexpired,
    no rollback). Raises :class:`~p2pnode.release.errors.ReleaseError` naming why each
    offered release was refused, or ``LookupError`` when no peer offered any."""
    seen: dict[str, SignedRelease] = {}
    refused: dict[str, str] = {}
    for peer in await holders(net, name_key(name)):
        with trio.move_on_after(15):
            try:
                async with net.open_stream(peer, RELEASE_PROTOCOL, timeout=5) as fs:
                    head = await request(fs, {"op": "find", "name": name})
                    digests = head.get("digests")
                    if not isinstance(digests, list):
                        continue
                    for digest in digests[:32]:
                        if not isinstance(digest, str) or digest in seen or digest in refused:
                            continue
                        head = await request(fs, {"op": "manifest", "digest": digest})
                        data = await receive_payload(fs, head)
                        try:
                            release = trust.check(data, now=now)
                        except ReleaseError as e:
                            refused[digest] = str(e)
                            continue
                        if release.digest == digest and release.manifest.name == name:
                            seen[digest] = release
            except (NetError, SwarmError):
                continue
    fits = [r for r in seen.values() if version is None or r.manifest.version == version]
    if fits:
        return max(fits, key=lambda r: (r.manifest.version, r.manifest.created_at))
    want = f"{name}@{version}" if version is not None else name
    if refused:
        reasons = "; ".join(sorted(set(refused.values())))[:800]
        raise ReleaseError(f"no acceptable release of {want}: {reasons}")
    if seen:
        offered = ", ".join(sorted({f"v{r.manifest.version}" for r in seen.values()}))
        raise LookupError(f"no peer offers {want} (offered: {offered})")
    raise LookupError(f"no peer offers a release of {name}")
