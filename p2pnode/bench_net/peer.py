"""The node process that ``hearth bench net`` runs: a real hardened host on JSON lines.

Run ``python -m p2pnode.bench_net.peer --bootstrap ADDR [--model HEX ...] [--bench]``.
It starts a real hardened host, prints one JSON line
``{"event": "ready", "peer_id", "addrs"}`` and then answers JSON-line commands on stdin,
one JSON line each on stdout (:class:`~p2pnode.bench_net.procs.PeerProcess` drives it)::

    {"cmd": "trade", "peer": ID, "model": HEX, "chunks": N} {"cmd": "connect", "addr": A}
    {"cmd": "mesh", "topic": T} {"cmd": "stats"} {"cmd": "rss"}
    {"cmd": "bench_publish", "count": N, "rate": R, "size": B} {"cmd": "bench_results"}
    {"cmd": "quit"}

Every peer subscribes to the offers topic, as a node does; with ``--model`` it is a
provider: it subscribes to that model's RFQ topic, announces the model (DHT +
rendezvous) and serves the trade protocol (RFQ → Bid → Award → Accept → Prompt →
TokenChunk… → EndOfStream, every message sealed), which the bench times as stream
throughput; with ``--bench`` it joins the bench topic. The multi-process tests run a
subclass with more commands (``tests/p2pnode/net/scripted_peer.py``). This is bench
tooling, not part of the node.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from market.gossip import offer_check, rfq_check
from p2pnode.net.config import NetConfig
from p2pnode.net.framing import FramedStream
from p2pnode.net.host import NodeNet, open_node_host
from p2pnode.net.pubsub import GossipMessage, offers_topic, rfq_topic

TRADE = "/hearth/test/trade/1"
BENCH_TOPIC = "/hearth/1/bench"
_ADDR = bytes(20)
_HASH = bytes(32)


def emit(obj: dict[str, Any]) -> None:
    """Write ``obj`` as one JSON line on stdout (the driver reads it)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Peer:
    """State of one test peer process."""

    def __init__(self, net: NodeNet, seed: bytes, models: list[str]) -> None:
        from market.protocol.signing import SigningKey

        self.net = net
        self.key = SigningKey.from_private_bytes(seed)
        self.models = models
        self.offers: list[str] = []
        self.rfqs: list[str] = []
        self.bench_latencies: list[float] = []
        self.bench_received = 0

    def seal(self, msg: Any) -> bytes:
        from market.protocol.envelope import seal

        return seal(msg, key=self.key, now_ms=int(time.time() * 1000), rng=os.urandom)

    @staticmethod
    def unseal(data: bytes | None) -> Any:
        from market.protocol.envelope import unseal

        if data is None:
            raise RuntimeError("stream ended early")
        return unseal(data, now_ms=int(time.time() * 1000)).message

    # -- gossip consumers --------------------------------------------------------------
    async def consume_offers(self, rx: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for m in rx:
            self.offers.append(m.origin)

    async def consume_rfqs(self, rx: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        from market.protocol.envelope import unseal

        async for m in rx:
            rfq = unseal(m.data, now_ms=int(time.time() * 1000)).message
            self.rfqs.append(rfq.job_id.hex())

    async def consume_bench(self, rx: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for m in rx:
            (sent,) = struct.unpack(">d", m.data[:8])
            self.bench_latencies.append(time.time() - sent)
            self.bench_received += 1

    # -- stream handlers ---------------------------------------------------------------
    async def serve_trade(self, fs: FramedStream) -> None:
        from market.protocol.messages import (
            Accept,
            Award,
            Bid,
            EndOfStream,
            Prompt,
            Rfq,
            TokenChunk,
        )

        rfq = self.unseal(await fs.receive(timeout=10))
        if not isinstance(rfq, Rfq) or rfq.model_id not in self.models:
            await fs.send_error("model not held")
            return
        me = self.net.peer_id
        bid = Bid(
            job_id=rfq.job_id,
            provider=me,
            provider_address=_ADDR,
            price_per_1k=1000,
            est_ttft_ms=50,
            est_tokens_per_s=100.0,
            chunk_tokens=4,
            credit_chunks=1,
        )
        await fs.send(self.seal(bid))
        award = self.unseal(await fs.receive(timeout=10))
        assert isinstance(award, Award) and award.provider == me
        await fs.send(self.seal(Accept(job_id=rfq.job_id, provider=me)))
        prompt = self.unseal(await fs.receive(timeout=10))
        assert isinstance(prompt, Prompt) and prompt.prompt is not None
        n = int(prompt.prompt.split("=")[1])
        for seq in range(n):
            chunk = TokenChunk(
                job_id=rfq.job_id,
                seq=seq,
                token_ids=(1, 2, 3, 4),
                logprobs=(-0.1, -0.2, -0.3, -0.4),
                text="abcd",
                chain_hash=_HASH,
            )
            await fs.send(self.seal(chunk))
        eos = EndOfStream(
            job_id=rfq.job_id, total_tokens=4 * n, finish_reason="length", result_commitment=_HASH
        )
        await fs.send(self.seal(eos))
        await fs.send_end()

    # -- commands ----------------------------------------------------------------------
    async def trade(self, peer: str, model: str, chunks: int) -> dict[str, Any]:
        from market.protocol.messages import (
            Accept,
            Award,
            Bid,
            EndOfStream,
            Prompt,
            Rfq,
            TokenChunk,
        )

        job = os.urandom(16)
        rfq = Rfq(
            job_id=job,
            buyer=self.net.peer_id,
            buyer_address=_ADDR,
            model_id=model,
            prompt_tokens=10,
            max_tokens=4 * chunks,
            max_price_per_1k=5000,
            region="",
            bid_window_ms=1000,
        )
        t0 = time.perf_counter()
        async with self.net.open_stream(peer, TRADE) as fs:
            await fs.send(self.seal(rfq))
            bid = self.unseal(await fs.receive(timeout=10))
            assert isinstance(bid, Bid) and bid.job_id == job
            award = Award(
                job_id=job,
                provider=peer,
                price_per_1k=bid.price_per_1k,
                chunk_tokens=bid.chunk_tokens,
                credit_chunks=bid.credit_chunks,
                max_tokens=4 * chunks,
            )
            await fs.send(self.seal(award))
            accept = self.unseal(await fs.receive(timeout=10))
            assert isinstance(accept, Accept)
            await fs.send(self.seal(Prompt(job_id=job, prompt=f"n={chunks}")))
            got = 0
            eos = None
            async for frame in fs:
                msg = self.unseal(frame)
                if isinstance(msg, TokenChunk):
                    assert msg.seq == got
                    got += 1
                elif isinstance(msg, EndOfStream):
                    eos = msg
            await fs.send_end()
            stream_bytes = fs.bytes_in
        return {
            "bytes_in": stream_bytes,
            "bid_price": bid.price_per_1k,
            "chunks": got,
            "eos_tokens": eos.total_tokens if eos else None,
            "seconds": time.perf_counter() - t0,
        }

    async def bench_publish(self, req: dict[str, Any]) -> int:
        async def send(data: bytes) -> None:
            await self.net.publish(BENCH_TOPIC, data)

        return await bench_publish_schedule(send, req)

    def install(self, net: NodeNet) -> None:
        """Serve this peer's stream protocols on ``net``."""
        net.set_handler(TRADE, self.serve_trade)

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Answer one JSON-line command."""
        cmd = req.get("cmd")
        net = self.net
        if cmd == "trade":
            return await self.trade(req["peer"], req["model"], int(req.get("chunks", 8)))
        if cmd == "connect":
            return {"peer": await net.connect(req["addr"])}
        if cmd == "mesh":
            return {"mesh": net.mesh_size(req["topic"]), "peers": net.topic_peers(req["topic"])}
        if cmd == "stats":
            return net.stats()
        if cmd == "rss":
            return {"rss_mb": rss_mb(), "cpu_s": cpu_s()}
        if cmd == "bench_publish":
            return {"sent": await self.bench_publish(req)}
        if cmd == "bench_results":
            return {"received": self.bench_received, "latencies": self.bench_latencies}
        raise ValueError(f"unknown command {cmd!r}")


async def bench_publish_schedule(
    send: Callable[[bytes], Awaitable[None]], req: dict[str, Any]
) -> int:
    """Publish ``req["count"]`` stamped payloads on a wall-clock schedule.

    Publication ``j`` goes out at ``start_at + j * period`` (``time.time()`` seconds, the
    clock every process on the machine shares), so the bench can interleave all peers
    evenly instead of letting them publish in bursts. Without ``start_at`` the first
    goes out now and ``period`` defaults to ``1 / rate``. Each payload starts with the
    actual send time (big-endian float64), then zero padding up to ``size`` bytes.
    """
    count, size = int(req["count"]), int(req["size"])
    period = float(req.get("period") or 1.0 / float(req["rate"]))
    start_at = float(req.get("start_at") or time.time())
    pad = b"\0" * max(0, size - 8)
    for j in range(count):
        delay = start_at + j * period - time.time()
        if delay > 0:
            await trio.sleep(delay)
        await send(struct.pack(">d", time.time()) + pad)
    return count


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used so far."""
    t = os.times()
    return t.user + t.system


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def read_lines(stream: trio.abc.ReceiveStream) -> Any:
    """The non-blank lines of ``stream``, as bytes, until it ends."""
    buf = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line


async def main(args: argparse.Namespace, peer_class: type[Peer] = Peer) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    seed = bytes.fromhex(args.seed) if args.seed else os.urandom(32)
    cfg = NetConfig(
        listen=tuple(args.listen),
        announce=tuple(args.announce),
        bootstrap=tuple(args.bootstrap),
        peer_cache=Path(args.peer_cache) if args.peer_cache else None,
        relay=args.relay,
        dht=args.dht,
        target_peers=args.target_peers,
    )
    async with open_node_host(create_new_key_pair(seed), cfg) as net:
        peer = peer_class(net, seed, args.model)
        peer.install(net)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                peer.consume_offers, await net.subscribe(offers_topic(), offer_check())
            )
            if args.bench:
                nursery.start_soon(peer.consume_bench, await net.subscribe(BENCH_TOPIC))
            for model in args.model:
                rx = await net.subscribe(rfq_topic(model), rfq_check(model))
                nursery.start_soon(peer.consume_rfqs, rx)
                nursery.start_soon(net.provide, model)
            emit({"event": "ready", "peer_id": net.peer_id, "addrs": net.addrs})
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            async for line in read_lines(stdin):
                try:
                    req = json.loads(line)
                except ValueError:
                    emit({"ok": False, "error": "bad json"})
                    continue
                if req.get("cmd") == "quit":
                    break
                try:
                    res = await peer.handle(req)
                    emit({"ok": True, "id": req.get("id"), **res})
                except Exception as e:
                    emit({"ok": False, "id": req.get("id"), "error": f"{type(e).__name__}: {e}"})
            nursery.cancel_scope.cancel()


def cli(peer_class: type[Peer] = Peer, description: str | None = __doc__) -> None:
    """Parse the flags and run ``peer_class`` until ``quit``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--listen", action="append", default=[])
    p.add_argument("--announce", action="append", default=[])
    p.add_argument("--bootstrap", action="append", default=[])
    p.add_argument("--model", action="append", default=[])
    p.add_argument("--peer-cache", default=None)
    p.add_argument("--relay", default="client", choices=["off", "client", "reserve"])
    p.add_argument("--target-peers", type=int, default=8)
    p.add_argument("--dht", default="server", choices=["off", "client", "server"])
    p.add_argument("--bench", action="store_true")
    p.add_argument("--seed", default="", help="identity: 32-byte seed in hex (default random)")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    if not args.listen:
        args.listen = ["/ip4/127.0.0.1/tcp/0"]
    trio.run(main, args, peer_class)


if __name__ == "__main__":
    cli()
