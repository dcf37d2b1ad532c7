"""A home node whose address changes (restart on a new port: a router's new mapping, a
new IP) must stay reachable: fresh addresses win over the peer cache and the peerstore,
and a failed dial of known addresses falls back to discovery at once.

Real processes on 127.0.0.1: a bootstrap, and a provider restarted under the same
identity on a new port. Before the fix the buyer dialled only the cached (dead) address
and py-libp2p then refused to dial the peer at all for 60 s; the provider was never
reached within 120 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2pnode.bench_net.procs import PeerProcess, spawn_bootstrap, stop_all
from p2pnode.net import NetConfig, NetError, open_node_host
from p2pnode.net.peercache import PeerCache
from tests.p2pnode.net.scripted_peer import spawn_peer

MODEL = "c3" * 32
TRADE = "/hearth/test/trade/1"
# Well under the 120 s that failed before; the fixed path takes about a second.
PROMPTLY_S = 20.0


async def _spawn(*args: object, **kw: object) -> PeerProcess:
    return await trio.to_thread.run_sync(lambda: spawn_peer(*args, **kw))  # type: ignore[arg-type]


async def _stop(*procs: PeerProcess | None) -> None:
    await trio.to_thread.run_sync(stop_all, list(procs))


async def _trade(net, peer: str) -> None:  # type: ignore[no-untyped-def]
    """One request/answer on the provider's trade protocol (proves we reached it)."""
    import time

    from market.protocol.envelope import seal, unseal
    from market.protocol.messages import Bid, Rfq
    from market.protocol.signing import SigningKey

    key = SigningKey.from_private_bytes(os.urandom(32))
    # the envelope's sender is not checked by the test provider, only the Rfq itself
    rfq = Rfq(
        job_id=os.urandom(16),
        buyer=key.peer_id,
        buyer_address=bytes(20),
        model_id=MODEL,
        prompt_tokens=1,
        max_tokens=4,
        max_price_per_1k=5000,
        region="",
        bid_window_ms=1000,
    )
    async with net.open_stream(peer, TRADE, timeout=5) as fs:
        now = int(time.time() * 1000)
        await fs.send(seal(rfq, key=key, now_ms=now, rng=os.urandom))
        data = await fs.receive(timeout=5)
        assert data is not None
        assert isinstance(unseal(data, now_ms=int(time.time() * 1000)).message, Bid)


async def _reach(net, peer: str, deadline_s: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``peer`` answers a trade, trying the way the buyer does.

    Each attempt: be connected to the model's providers (DHT + rendezvous, as
    ``Client._publish`` does), then open a stream to the provider by its peer id.
    """
    t0 = trio.current_time()
    with trio.fail_after(deadline_s):
        while True:
            with trio.move_on_after(5):
                await net.connect_providers(MODEL)
            try:
                await _trade(net, peer)
                return trio.current_time() - t0
            except NetError:
                await trio.sleep(0.5)


def _buyer_cfg(boot: str, cache: Path) -> NetConfig:
    # no listener: like a buyer behind a router, it can dial out but no one can dial it
    return NetConfig(listen=(), bootstrap=(boot,), peer_cache=cache, relay="off", target_peers=0)


async def test_provider_restarted_on_a_new_port_is_reached_by_a_buyer_with_a_stale_cache(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "peers.json"
    seed = os.urandom(32).hex()
    buyer_key = create_new_key_pair()
    boot = prov = prov2 = None
    try:
        boot = await trio.to_thread.run_sync(lambda: spawn_bootstrap("--http-port", "0"))
        # the provider does not dial anyone itself: the buyer must find and dial it
        prov_args = ("--model", MODEL, "--seed", seed, "--target-peers", "0")
        prov = await _spawn([boot.addr], *prov_args)
        # first session: the buyer meets the provider; its peer cache keeps the address
        async with open_node_host(buyer_key, _buyer_cfg(boot.addr, cache)) as buyer:
            await _reach(buyer, prov.peer_id, 60)
        old = [a for a in PeerCache.load(cache).peers[prov.peer_id][0] if "/tcp/" in a]
        assert old and all(a.split("/p2p/")[0] in " ".join(prov.addrs) for a in old)

        # the provider restarts under the same identity on a new port
        await _stop(prov)
        prov2 = await _spawn([boot.addr], *prov_args)
        assert prov2.peer_id == prov.peer_id and prov2.addrs != prov.addrs

        # the buyer restarts with its (now stale) cache and must reach it promptly
        async with open_node_host(buyer_key, _buyer_cfg(boot.addr, cache)) as buyer:
            took = await _reach(buyer, prov2.peer_id, PROMPTLY_S)
            assert took < PROMPTLY_S
        # the cache now holds the new address and not the dead one
        fresh = PeerCache.load(cache).peers[prov2.peer_id][0]
        assert not set(fresh) & set(old)
        assert any(a.split("/p2p/")[0] in " ".join(prov2.addrs) for a in fresh)
    finally:
        await _stop(prov, prov2, boot)


async def test_peer_known_at_an_old_address_is_reached_through_discovery(tmp_path: Path) -> None:
    """The dial-back direction: a node that knows a peer only at its old address (the
    provider answering a buyer that restarted) opens a stream to it by peer id."""
    seed = os.urandom(32).hex()
    boot = mover = mover2 = None
    try:
        boot = await trio.to_thread.run_sync(lambda: spawn_bootstrap("--http-port", "0"))
        args = ("--model", MODEL, "--seed", seed, "--target-peers", "0")
        mover = await _spawn([boot.addr], *args)
        # no listener: the mover cannot dial us back, we must find it
        cfg = NetConfig(listen=(), bootstrap=(boot.addr,), relay="off", target_peers=0)
        async with open_node_host(create_new_key_pair(), cfg) as net:
            await net.connect(mover.addr)
            await _trade(net, mover.peer_id)
            await _stop(mover)
            with trio.fail_after(10):
                while mover.peer_id in net.connected_peers():
                    await trio.sleep(0.1)
            mover2 = await _spawn([boot.addr], *args)
            assert mover2.peer_id == mover.peer_id and mover2.addrs != mover.addrs
            # wait until the bootstrap's DHT has it again (as a provider joining does)
            t0 = trio.current_time()
            with trio.fail_after(PROMPTLY_S):
                while True:
                    try:
                        await _trade(net, mover2.peer_id)
                        break
                    except NetError:
                        await trio.sleep(0.5)
            took = trio.current_time() - t0
            assert took < PROMPTLY_S
            # reached through the DHT: the old address was all it knew
            assert net.stats()["dials"].get("ok_after_lookup", 0) >= 1
    finally:
        await _stop(mover, mover2, boot)
