"""New releases, announced and followed: how a running node learns of an update.

A publisher's releases are announced on gossip, one topic per publisher
(:func:`release_topic`); the message is the signed release file itself, so the topic
check (:func:`announcement_check`) lets through only releases that publisher signed
(a forged or foreign one is dropped and its sender scored down, like any bad frame).
``hearth model seed`` announces what it seeds when it starts and every
``ANNOUNCE_EVERY_S`` after, so nodes that join later hear of it too.

A node that follows a model name (``[release] follow``) runs :class:`Follower`: for
an announcement of a newer version that its trust store accepts, it fetches the
release from the swarm in the background (serving the chunks it has meanwhile),
checks the finished folder (every chunk, and the content address the loader computes
from the bytes), trusts it, and hands the loaded model to the node's ``switch``,
which checks the golden outputs and moves new jobs to it (see
:mod:`p2pnode.node.runtime`). A release that fails any of it is remembered and never
tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pnode.net import NetError
from p2pnode.net.host import NodeNet
from p2pnode.release.errors import ReleaseError
from p2pnode.release.fetch import Fetcher, announce, holders
from p2pnode.release.manifest import SignedRelease, check_directory, open_release
from p2pnode.release.store import ReleaseStore
from p2pnode.release.swarm import SwarmError, name_key, release_key
from p2pnode.release.trust import TrustStore

__all__ = [
    "ANNOUNCE_EVERY_S",
    "MAX_ANNOUNCEMENT",
    "Follower",
    "announce_releases",
    "announcement_check",
    "release_topic",
]

logger = logging.getLogger(__name__)

ANNOUNCE_EVERY_S = 30.0
MAX_ANNOUNCEMENT = 512 * 1024  # a release file on gossip (SmolLM2's is 17 KB in fp32)
STALL_S = 600.0  # an update whose fetch gets no chunk this long waits for the next announcement


def release_topic(publisher: bytes) -> str:
    """The gossip topic of ``publisher``'s releases."""
    return f"/hearth/1/releases/{publisher.hex()}"


def announcement_check(publisher: bytes) -> Callable[[bytes, str], None]:
    """The topic check: a release signed by ``publisher`` (raises on anything else)."""

    def check(data: bytes, origin: str) -> None:
        if len(data) > MAX_ANNOUNCEMENT:
            raise ReleaseError(f"announcement of {len(data)} bytes (max {MAX_ANNOUNCEMENT})")
        release = open_release(data)
        if release.manifest.publisher != publisher:
            raise ReleaseError("a release of another publisher on this topic")

    return check


async def announce_releases(net: NodeNet, releases: list[SignedRelease]) -> None:
    """Announce ``releases`` on their publishers' topics: soon after start (2, 5 and
    10 s, as the mesh forms), then every :data:`ANNOUNCE_EVERY_S`. Before each round it
    dials a few nodes that follow or hold the model (they announce its name in the
    DHT), so the announcement reaches them. A release too big for gossip is found
    through the DHT only."""
    pauses = [2.0, 3.0, 5.0]
    while True:
        await trio.sleep(pauses.pop(0) if pauses else ANNOUNCE_EVERY_S)
        for release in releases:
            data = release.encode()
            if len(data) > MAX_ANNOUNCEMENT:
                continue
            try:
                with trio.move_on_after(10):
                    await net.connect_providers(name_key(release.manifest.name), count=8)
                await net.publish(release_topic(release.manifest.publisher), data)
            except Exception as e:  # no peer yet: the next round
                logger.debug("announcement not published: %r", e)


class Follower:
    """Follow model ``name``: fetch, check and hand over each newer trusted release."""

    def __init__(
        self,
        *,
        net: NodeNet,
        store: ReleaseStore,
        trust: TrustStore,
        name: str,
        current: Callable[[], int],
        switch: Callable[[Any, SignedRelease], Awaitable[None]],
    ) -> None:
        self.net = net
        self.store = store
        self.trust = trust
        self.name = name
        self.current = current  # the version served now (0: none known)
        self.switch = switch
        self.failed: dict[str, str] = {}  # digest -> why it will not be tried again
        self._lock = trio.Lock()

    async def run(self) -> None:
        """Listen on every trusted publisher's topic until cancelled (and say in the DHT
        that this node follows the name: publishers' seeds dial such nodes)."""
        self.net.start_soon(self.net.provide, name_key(self.name))
        async with trio.open_nursery() as nursery:
            for publisher in sorted(self.trust.trusted):
                topic = release_topic(publisher)
                channel = await self.net.subscribe(topic, check=announcement_check(publisher))
                nursery.start_soon(self._listen, channel)

    async def _listen(self, channel: Any) -> None:
        async for msg in channel:
            try:
                await self.consider(msg.data, msg.origin)
            except Exception:  # one bad release must not stop the follower
                logger.exception("release update failed")

    async def consider(self, data: bytes, origin: str | None = None) -> bool:
        """Act on an announced release; ``True`` when the node switched to it."""
        try:
            release = self.trust.check(data)
        except ReleaseError as e:
            logger.info("announced release refused: %s", e)
            return False
        m = release.manifest
        if m.name != self.name or m.version <= self.current() or release.digest in self.failed:
            return False
        async with self._lock:  # one update at a time; a newer one waits its turn
            if m.version <= self.current():
                return False
            return await self._update(release, origin)

    async def _update(self, release: SignedRelease, origin: str | None) -> bool:
        m = release.manifest
        logger.warning("fetching %s (%d bytes) to update to it", m.label(), m.total_size)
        local = await trio.to_thread.run_sync(self.store.open, release)
        self.net.start_soon(announce, self.net, release)
        if not local.complete:

            async def peers() -> list[str]:
                return await holders(self.net, release_key(release.digest))

            fetcher = Fetcher(self.net, local, peers=peers)
            if origin:
                fetcher.add_peer(origin)
            try:
                await fetcher.run(stall_s=STALL_S)
            except (NetError, SwarmError) as e:
                logger.warning("fetching %s failed: %s (next announcement retries)", m.label(), e)
                return False
        try:
            loaded = await trio.to_thread.run_sync(check_directory, m, local.files)
            await trio.to_thread.run_sync(lambda: self.trust.accept(release.encode()))
            await self.switch(loaded, release)
        except ReleaseError as e:
            self.failed[release.digest] = str(e)
            logger.error("not updating to %s: %s", m.label(), e)
            return False
        return True
