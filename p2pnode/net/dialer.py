"""Dialling a peer by id when its address may have changed since we last saw it.

A home node's address changes: it restarts on a new port, its router hands out a new
mapping, its ISP a new IP. py-libp2p 0.8.1 makes such a node unreachable: its swarm
dials at most one TCP address per peer — the first in the peerstore, i.e. the *oldest*
one it learned (a new address is appended behind the stale one) — and after that dial
fails it refuses to dial the peer at all for 60 s (its "negative peer cache"). A buyer
whose peer cache held a provider's old port never reached it again (issue 13, item 6).

:class:`Dialer` is the one way :class:`~p2pnode.net.host.NodeNet` connects to a peer:

* **Freshest first.** Candidates are the addresses of the peer's newest *signed* peer
  record (py-libp2p keeps the highest sequence number it has seen, from identify,
  gossip and DHT answers), then the caller's hints (an explicit address, a discovery
  answer, the peer cache), then whatever else the peerstore holds.
* **All at once.** Every candidate is dialled concurrently (the negative cache is
  bypassed); the first to complete the Noise handshake with the expected peer id
  wins and the others are cancelled. A dead address costs a refused connect in
  parallel, never the dial.
* **Discovery at once.** When every known address has failed — or while they hang,
  after ``grace_s`` — the network is asked where the peer is now (a DHT lookup whose
  signed peer records replace the peerstore's addresses), and what it names is dialled.
* **The working address wins.** It goes first in the peerstore, the addresses that
  failed are dropped from it, and the peer cache keeps the working set only (the
  cache's entry is replaced, never merged with the stale one).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p.peer.id import ID

from p2pnode.net.errors import DialFailed

if TYPE_CHECKING:
    from p2pnode.net.host import NodeNet

__all__ = ["Dialer", "addr_for_peer"]

logger = logging.getLogger(__name__)

# How long the peerstore keeps an address we learned or confirmed (seconds).
_ADDR_TTL = 7200
# Peers whose last lookup is remembered (one DHT lookup per peer per interval).
_MAX_LOOKUPS = 1024


def addr_for_peer(addr: object, peer_id: str) -> str | None:
    """``addr`` as this layer dials it for ``peer_id``, or ``None`` if it names another peer.

    Direct addresses lose their ``/p2p/<id>`` suffix (the swarm adds it); relayed ones
    (``<relay>/p2p/<relay id>/p2p-circuit``) end in ``/p2p/<peer id>``.
    """
    s = str(addr)
    if "/p2p-circuit" in s:
        base, _, tail = s.partition("/p2p-circuit")
        if tail and tail != f"/p2p/{peer_id}":
            return None
        return f"{base}/p2p-circuit/p2p/{peer_id}"
    if "/p2p/" in s:
        base, _, who = s.rpartition("/p2p/")
        if who != peer_id:
            return None
        s = base
    return s or None


class Dialer:
    """Connects :class:`NodeNet` to peers by id (see the module docstring)."""

    def __init__(self, net: NodeNet, *, grace_s: float = 2.0, lookup_interval_s: float = 2.0):
        self.net = net
        self.grace_s = grace_s
        self.lookup_interval_s = lookup_interval_s
        self.stats: Counter[str] = Counter()
        self._inflight: dict[ID, trio.Event] = {}
        self._looked_up: OrderedDict[ID, float] = OrderedDict()

    # -- what we know -------------------------------------------------------------------
    def candidates(self, pid: ID, hints: Sequence[object] = ()) -> list[str]:
        """Addresses to try for ``pid``, freshest first, deduplicated."""
        peer = pid.to_base58()
        store = self.net.host.get_peerstore()
        ordered = [*_signed_addrs(store, pid), *hints, *_stored_addrs(store, pid)]
        out: list[str] = []
        for a in ordered:
            norm = addr_for_peer(a, peer)
            if norm is not None and norm not in out:
                out.append(norm)
        return out

    def learn(self, pid: ID, addrs: Sequence[object], ttl: int = _ADDR_TTL) -> None:
        """Put newly learned ``addrs`` of ``pid`` in front of what the peerstore held.

        A discovery answer is newer than what we knew, so it is never merged *behind*
        stale addresses (which py-libp2p's ``add_addrs`` does); the newest signed
        record's addresses still come first.
        """
        peer = pid.to_base58()
        fresh = [a for a in (addr_for_peer(x, peer) for x in addrs) if a is not None]
        if fresh:
            self._order(pid, fresh, drop=())

    # -- dialling -----------------------------------------------------------------------
    async def dial(
        self,
        pid: ID,
        hints: Sequence[object] = (),
        *,
        timeout: float,
        discover: bool = True,
    ) -> None:
        """Be connected to ``pid``; raises :class:`DialFailed` (see the module docstring)."""
        if pid == self.net.host.get_id() or self._connected(pid):
            return
        waiting = self._inflight.get(pid)
        if waiting is not None:  # someone is dialling it already: share their result
            with trio.move_on_after(timeout):
                await waiting.wait()
            if self._connected(pid):
                return
        done = self._inflight[pid] = trio.Event()
        try:
            attempt = _Attempt(self, pid, discover=discover)
            with trio.move_on_after(timeout):
                await attempt.run(self.candidates(pid, hints))
        finally:
            done.set()
            if self._inflight.get(pid) is done:
                del self._inflight[pid]
        if attempt.won is None and self._connected(pid):
            self.stats["ok"] += 1  # it dialled us meanwhile
            return
        if attempt.won is None:
            self.stats["failed"] += 1
            tried = ", ".join(attempt.failures[:4]) or "no address known or found"
            if not attempt.failures and attempt.tried:
                tried = f"timed out after {timeout:g} s"
            raise DialFailed(f"dial to {pid} failed: {tried}")
        self.stats["ok"] += 1
        if attempt.won_by_lookup:
            self.stats["ok_after_lookup"] += 1
        self._confirmed(pid, attempt.won, attempt.failed)

    async def dial_addr(self, pid: ID, addr: str) -> None:
        """One connection attempt to ``pid`` at exactly ``addr`` (no retries)."""
        if "/p2p-circuit" in addr:
            await self.net.relay.dial(addr)
            return
        swarm = self.net.host.get_network()
        maddr = multiaddr.Multiaddr(addr)
        # A refused port is final: the swarm's 3 retries with backoff would only delay
        # the lookup. The swarm also checks the Noise identity against ``pid``.
        single = getattr(swarm, "_dial_addr_single_attempt", None)
        conn = await (single(maddr, pid) if single is not None else swarm.dial_addr(maddr, pid))
        started = getattr(conn, "event_started", None)
        if started is not None:
            await started.wait()

    async def lookup(self, pid: ID) -> list[str]:
        """Ask the network where ``pid`` is now; its fresh candidates (at most one lookup
        per peer per ``lookup_interval_s``; the answer lands in the peerstore)."""
        discovery = self.net.discovery
        if discovery is None:
            return []
        now = trio.current_time()
        last = self._looked_up.get(pid)
        if last is None or now - last >= self.lookup_interval_s:
            self._looked_up[pid] = now
            self._looked_up.move_to_end(pid)
            while len(self._looked_up) > _MAX_LOOKUPS:
                self._looked_up.popitem(last=False)
            self.stats["lookups"] += 1
            found = await discovery.locate(pid)
            self.learn(pid, found)
        return self.candidates(pid)

    # -- internals ----------------------------------------------------------------------
    def _connected(self, pid: ID) -> bool:
        return bool(self.net.host.get_network().connections.get(pid))

    def _confirmed(self, pid: ID, won: str, failed: Sequence[str]) -> None:
        """``won`` worked: first in the peerstore, failed addresses out, cache replaced."""
        swarm = self.net.host.get_network()
        negative = getattr(swarm, "_negative_peer_cache", None)
        if negative is not None:
            negative.evict(str(pid))
        keep = self._order(pid, [won], drop=failed)
        if "/p2p-circuit" not in won:
            self.net.remember_peer(pid.to_base58(), [a for a in keep if "/p2p-circuit" not in a])

    def _order(self, pid: ID, first: Sequence[str], drop: Sequence[str]) -> list[str]:
        """Rewrite ``pid``'s peerstore addresses: signed record, ``first``, the rest."""
        store = self.net.host.get_peerstore()
        peer = pid.to_base58()
        ordered: list[str] = []
        for a in [*_signed_addrs(store, pid), *first, *_stored_addrs(store, pid)]:
            norm = addr_for_peer(a, peer)
            if norm is not None and norm not in ordered and norm not in drop:
                ordered.append(norm)
        maddrs = []
        for a in ordered:
            try:
                maddrs.append(multiaddr.Multiaddr(a))
            except Exception:
                continue
        data = getattr(store, "peer_data_map", {}).get(pid)
        if data is not None:
            # Rewritten in place: store.clear_addrs would also forget the signed record
            # (and with it the sequence number that keeps older records out).
            data.clear_addrs()
            data.add_addrs(maddrs)
            data.set_ttl(_ADDR_TTL)
            data.update_last_identified()
        elif maddrs:
            store.add_addrs(pid, maddrs, _ADDR_TTL)
        return ordered


class _Attempt:
    """One dial of one peer: every candidate at once, then a lookup (module docstring)."""

    def __init__(self, dialer: Dialer, pid: ID, *, discover: bool) -> None:
        self.dialer = dialer
        self.pid = pid
        self.discover = discover
        self.tried: list[str] = []
        self.failed: list[str] = []
        self.failures: list[str] = []
        self.won: str | None = None
        self.won_by_lookup = False
        self._pending = 0
        self._all_failed = trio.Event()
        self._looked_up = False
        self._nursery: trio.Nursery | None = None

    async def run(self, first: list[str]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for addr in first:
                self._launch(addr)
            if self._pending == 0:
                self._all_failed.set()
            if self.discover:
                nursery.start_soon(self._lookup)

    def _launch(self, addr: str) -> None:
        if addr in self.tried or self._nursery is None:
            return
        self.tried.append(addr)
        self._pending += 1
        self._nursery.start_soon(self._try, addr)

    async def _try(self, addr: str) -> None:
        try:
            await self.dialer.dial_addr(self.pid, addr)
        except Exception as e:
            self.failed.append(addr)
            self.failures.append(f"{addr}: {type(e).__name__}")
            logger.debug("dial %s at %s failed: %r", self.pid, addr, e)
        else:
            if self.won is None:
                self.won = addr
                self.won_by_lookup = self._looked_up
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._all_failed.set()

    async def _lookup(self) -> None:
        # at once when every known address failed; after grace_s while some still hang
        with trio.move_on_after(self.dialer.grace_s):
            await self._all_failed.wait()
        self._looked_up = True
        try:
            found = await self.dialer.lookup(self.pid)
        except Exception as e:
            logger.info("lookup of %s failed: %r", self.pid, e)
            return
        for addr in found:
            self._launch(addr)


def _stored_addrs(store: Any, pid: ID) -> list[object]:
    """The peerstore's addresses of ``pid`` ([] for an unknown or expired peer)."""
    try:
        return list(store.addrs(pid))
    except Exception:  # PeerStoreError
        return []


def _signed_addrs(store: Any, pid: ID) -> list[object]:
    """Addresses of the newest signed peer record ``store`` holds for ``pid`` ([] if none)."""
    try:
        envelope = store.get_peer_record(pid)
        if envelope is None:
            return []
        return list(envelope.record().addrs)
    except Exception:
        return []
