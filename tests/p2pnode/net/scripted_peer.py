"""A scriptable node process for the multi-process tests: the bench peer, plus test commands.

``python -m tests.p2pnode.net.scripted_peer --bootstrap ADDR [--model HEX ...]`` runs
the process of ``hearth bench net`` (:mod:`p2pnode.bench_net.peer`: same flags, same
JSON lines, same commands) with these commands too::

    {"cmd": "info"} {"cmd": "publish_offer"} {"cmd": "publish_rfq", "model": HEX, "job": HEX}
    {"cmd": "publish_raw", "topic": T, "hex": HEX} {"cmd": "received"}
    {"cmd": "find", "model": HEX} {"cmd": "connect_providers", "model": HEX}

and serves ``/hearth/test/drip/1``, which streams a chunk every 0.2 s forever (for the
SIGSTOP/SIGKILL tests). Start one with :func:`spawn_peer`.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Any

import trio

from p2pnode.bench_net.peer import Peer, cli
from p2pnode.bench_net.procs import PeerProcess
from p2pnode.net.framing import FramedStream
from p2pnode.net.host import NodeNet
from p2pnode.net.pubsub import offers_topic, rfq_topic

__all__ = ["DRIP", "ScriptedPeer", "child_env", "peer_argv", "spawn_peer"]

DRIP = "/hearth/test/drip/1"
_ADDR = bytes(20)
_ROOT = Path(__file__).resolve().parents[3]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) with the repository on PYTHONPATH, so ``-m tests.…`` runs."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), out.get("PYTHONPATH")) if p)
    return out


def peer_argv() -> list[str]:
    """The command line that starts a scripted peer (flags follow)."""
    return [sys.executable, "-m", "tests.p2pnode.net.scripted_peer"]


def spawn_peer(bootstrap: list[str], *extra: str, **kw: Any) -> PeerProcess:
    """Start a scripted peer joined to ``bootstrap``."""
    argv = peer_argv()
    for b in bootstrap:
        argv += ["--bootstrap", b]
    kw["env"] = child_env(kw.get("env"))
    return PeerProcess(argv + list(extra), **kw)


class ScriptedPeer(Peer):
    """The bench peer with the commands and the drip protocol only tests need."""

    def install(self, net: NodeNet) -> None:
        super().install(net)
        net.set_handler(DRIP, self.serve_drip)

    async def serve_drip(self, fs: FramedStream) -> None:
        await fs.receive(timeout=10)
        seq = 0
        while True:
            await fs.send(struct.pack(">I", seq) + b"x" * 64)
            seq += 1
            await trio.sleep(0.2)

    async def publish_offer(self) -> None:
        from market.protocol.messages import ModelOffer, Offer

        offer = Offer(
            provider=self.net.peer_id,
            provider_address=_ADDR,
            region="test",
            power_state="normal",
            load=0.0,
            gpus=(),
            models=tuple(
                ModelOffer(model_id=m, name="m", price_per_1k=1000, max_context=2048)
                for m in self.models
            ),
            ttl_s=60,
        )
        await self.net.publish(offers_topic(), self.seal(offer))

    async def publish_rfq(self, model: str, job_hex: str) -> None:
        from market.protocol.messages import Rfq

        rfq = Rfq(
            job_id=bytes.fromhex(job_hex),
            buyer=self.net.peer_id,
            buyer_address=_ADDR,
            model_id=model,
            prompt_tokens=10,
            max_tokens=16,
            max_price_per_1k=5000,
            region="",
            bid_window_ms=1000,
        )
        await self.net.publish(rfq_topic(model), self.seal(rfq))

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        net = self.net
        if cmd == "info":
            return {"peer_id": net.peer_id, "addrs": net.addrs, "peers": net.connected_peers()}
        if cmd == "publish_offer":
            await self.publish_offer()
            return {}
        if cmd == "publish_rfq":
            await self.publish_rfq(req["model"], req["job"])
            return {}
        if cmd == "publish_raw":
            await net.publish(req["topic"], bytes.fromhex(req["hex"]))
            return {}
        if cmd == "received":
            return {"offers": sorted(set(self.offers)), "rfqs": sorted(self.rfqs)}
        if cmd == "connect_providers":
            return {"connected": await net.connect_providers(req["model"])}
        if cmd == "find":
            return {"providers": await net.find_providers(req["model"])}
        return await super().handle(req)


if __name__ == "__main__":
    cli(ScriptedPeer, __doc__)
