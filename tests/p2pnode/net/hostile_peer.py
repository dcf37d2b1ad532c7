"""A hostile peer process for the robustness tests: garbage on every protocol.

``python -m tests.p2pnode.net.hostile_peer --target ADDR [--target ADDR …]`` connects to each
target with a stock py-libp2p host and, on every protocol the target speaks (learned via
identify, plus a fixed list), sends: random bytes, an undecodable protobuf frame, an
oversize length prefix, and on ``/meshsub/*`` also forged messages — an RSA-style
sender id with an unparsable key, a valid sender with a bad signature, and a correctly
signed message whose payload is not a wire-format envelope. It also tries to connect
with a plaintext-only and a secio-only security stack, which must be refused.

Prints one JSON object: what was sent, and which attempts the target accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils.varint import encode_uvarint, encode_varint_prefixed

from p2pnode.net.pubsub import offers_topic

FIXED_PROTOCOLS = [
    "/meshsub/1.1.0",
    "/meshsub/1.0.0",
    "/ipfs/id/1.0.0",
    "/ipfs/id/push/1.0.0",
    "/ipfs/ping/1.0.0",
    "/ipfs/kad/1.0.0",
    "/rendezvous/1.0.0",
    "/libp2p/circuit/relay/0.2.0/hop",
    "/libp2p/circuit/relay/0.2.0/stop",
    "/hearth/test/trade/1",
    "/hearth/test/drip/1",
]


def _forged_rsa_message() -> rpc_pb2.Message:
    """Sender id of an RSA-style (hashed) key, with a key field that does not parse."""
    from libp2p.crypto.rsa import create_new_key_pair as rsa_pair

    rsa = rsa_pair(1024)
    return rpc_pb2.Message(
        from_id=ID.from_pubkey(rsa.public_key).to_bytes(),
        data=b"forged",
        seqno=os.urandom(8),
        topicIDs=[offers_topic()],
        signature=os.urandom(64),
        key=b"\x08\x00\x12\x05junk!",
    )


def _bad_signature_message(me: Any) -> rpc_pb2.Message:
    return rpc_pb2.Message(
        from_id=me.to_bytes(),
        data=b"x" * 32,
        seqno=os.urandom(8),
        topicIDs=[offers_topic()],
        signature=os.urandom(64),
    )


def _signed_garbage_message(host: Any) -> rpc_pb2.Message:
    """Correctly signed pubsub message whose payload is not a sealed wire message."""
    from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

    msg = rpc_pb2.Message(
        from_id=host.get_id().to_bytes(),
        data=b"\x93not-an-envelope" + os.urandom(32),
        seqno=os.urandom(8),
        topicIDs=[offers_topic()],
    )
    sig = host.get_private_key().sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = host.get_public_key().serialize()
    msg.signature = sig
    return msg


def _rpc(*msgs: rpc_pb2.Message) -> bytes:
    return encode_varint_prefixed(rpc_pb2.RPC(publish=list(msgs)).SerializeToString())


async def _send(host: Any, peer: ID, proto: str, payloads: list[bytes]) -> str:
    try:
        with trio.fail_after(5):
            stream = await host.new_stream(peer, [TProtocol(proto)])
    except Exception as e:
        return f"refused:{type(e).__name__}"
    sent = 0
    try:
        with trio.move_on_after(3):
            for p in payloads:
                await stream.write(p)
                sent += 1
                await trio.sleep(0.05)
        with trio.move_on_after(0.5):
            await stream.read(1024)
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            await stream.reset()
    return f"sent:{sent}"


async def _try_insecure(target: str, kind: str) -> bool:
    """True if a plaintext-/secio-only host managed to connect (it must not)."""
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    from libp2p.security.secio import transport as secio

    kp = create_new_key_pair()
    sec: Any
    if kind == "plaintext":
        sec = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(kp)}
    else:
        sec = {TProtocol(secio.ID): secio.Transport(kp)}
    host = new_host(key_pair=kp, sec_opt=sec)
    info = info_from_p2p_addr(multiaddr.Multiaddr(target))
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        try:
            with trio.fail_after(8):
                await host.connect(info)
            return bool(host.get_network().connections.get(info.peer_id))
        except Exception:
            return False


async def attack(targets: list[str]) -> dict[str, Any]:
    host = new_host(key_pair=create_new_key_pair())
    report: dict[str, Any] = {"targets": {}}
    # undecodable protobuf first, so every stream hits the decoder deterministically
    garbage = [
        encode_uvarint(50) + b"\xff" * 50,
        encode_uvarint(64 * 1024 * 1024) + os.urandom(100),  # oversize length prefix
        os.urandom(200),
        b"\x00\x00\x00\x00\x01" + b"\xff" * 40,
    ]
    forged = _forged_rsa_message()
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        for target in targets:
            info = info_from_p2p_addr(multiaddr.Multiaddr(target))
            with trio.fail_after(10):
                await host.connect(info)
            await trio.sleep(0.5)  # let identify finish so we learn its protocols
            try:
                known = list(host.get_peerstore().get_protocols(info.peer_id))
            except Exception:
                known = []
            protos = sorted(set(FIXED_PROTOCOLS) | {str(p) for p in known})
            results: dict[str, Any] = {}
            for proto in protos:
                payloads = list(garbage)
                if proto.startswith("/meshsub/"):
                    payloads = [
                        _rpc(forged),
                        _rpc(_bad_signature_message(host.get_id())),
                        _rpc(_signed_garbage_message(host)),
                        *garbage,
                    ]
                results[proto] = await _send(host, info.peer_id, proto, payloads)
                if not host.get_network().connections.get(info.peer_id):
                    try:
                        with trio.fail_after(5):
                            await host.connect(info)
                    except Exception:
                        results[proto] += ";reconnect-refused"
            report["targets"][target] = results
        report["plaintext_connected"] = await _try_insecure(targets[0], "plaintext")
        report["secio_connected"] = await _try_insecure(targets[0], "secio")
    return report


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", action="append", required=True)
    args = p.parse_args()
    import logging

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    report = trio.run(attack, args.target)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    cli()
