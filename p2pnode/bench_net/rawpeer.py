"""Baseline for ``hearth bench net``: stock py-libp2p pubsub, tuned, *without* our layer.

Same JSON-line protocol as :mod:`p2pnode.bench_net.peer` for the bench commands (``mesh``,
``connect_many``, ``bench_publish``, ``bench_results``, ``rss``, ``quit``). The router
is configured as measured in the field notes (GossipSub v1.1, D=6/4/12, 1 s heartbeat);
nothing is hardened. The bench runs both and reports our latency against this one,
measured in the same run on the same machine.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from p2pnode.bench_net.peer import (
    BENCH_TOPIC,
    bench_publish_schedule,
    cpu_s,
    emit,
    read_lines,
    rss_mb,
)


async def main() -> None:
    host = new_host(key_pair=create_new_key_pair(), muxer_preference="YAMUX")
    router = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        max_messages_per_topic_per_second=500.0,
    )
    pubsub = Pubsub(host, router, strict_signing=True)
    latencies: list[float] = []
    async with (
        host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]),
        background_trio_service(pubsub),
        background_trio_service(router),
        trio.open_nursery() as nursery,
    ):
        await pubsub.wait_until_ready()
        sub = await pubsub.subscribe(BENCH_TOPIC)

        async def consume() -> None:
            me_bytes = host.get_id().to_bytes()
            while True:
                m = await sub.get()
                if m.from_id == me_bytes:
                    continue  # stock pubsub echoes our own publications
                (sent,) = struct.unpack(">d", m.data[:8])
                latencies.append(time.time() - sent)

        nursery.start_soon(consume)
        me = host.get_id().to_base58()
        addrs = [f"{a}/p2p/{me}" for a in host.get_addrs()]
        emit({"event": "ready", "peer_id": me, "addrs": addrs})
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async for line in read_lines(stdin):
            req: dict[str, Any] = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "quit":
                break
            res: dict[str, Any] = {}
            if cmd == "connect_many":

                async def dial(a: str) -> None:
                    try:
                        with trio.fail_after(10):
                            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(a)))
                    except Exception:
                        pass

                async with trio.open_nursery() as n:
                    for a in req["addrs"]:
                        n.start_soon(dial, a)
            elif cmd == "mesh":
                res = {"mesh": len(router.mesh.get(req["topic"], ())), "peers": 0}
            elif cmd == "bench_publish":

                async def send(data: bytes) -> None:
                    await pubsub.publish(BENCH_TOPIC, data)

                res = {"sent": await bench_publish_schedule(send, req)}
            elif cmd == "bench_results":
                res = {"received": len(latencies), "latencies": latencies}
            elif cmd == "rss":
                res = {"rss_mb": rss_mb(), "cpu_s": cpu_s()}
            elif cmd == "stats":
                res = {"pubsub": {"dropped_full": 0}}
            emit({"ok": True, **res})
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    import logging

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    trio.run(main)
