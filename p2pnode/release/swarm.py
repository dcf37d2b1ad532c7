"""The release transfer protocol, ``/hearth/release/1``: manifests, have-maps, chunks.

A stream carries requests one after another, each a msgpack map of at most 1 KiB:

=========================================  =============================================
request                                    answer
=========================================  =============================================
``{"op": "find", "name": N}``              ``{"ok": true, "digests": [...]}``: the
                                           releases of model ``N`` held here
``{"op": "manifest", "digest": D}``        ``{"ok": true, "size": S}``, then ``S`` bytes
                                           of the signed release, in frames
``{"op": "have", "digest": D}``            ``{"ok": true, "have": BITS, "held": n}``
``{"op": "chunk", "digest": D, "i": i}``   ``{"ok": true, "size": S}``, then the chunk's
                                           ``S`` bytes in frames of 256 KiB
=========================================  =============================================

and ``{"ok": false, "error": E, "detail": …}`` otherwise, with ``E`` one of
``bad_request``, ``not_held``, ``busy`` (every upload slot taken), ``spread`` (a seed
that gave this chunk out moments ago and has chunks nobody got yet: ask the swarm).
A requester checks every chunk against the signed manifest before it writes it; a
bad request gets its error and the stream goes on serving.

The uploader is a home's uplink: at most ``max_uploads`` chunks are sent at once, and
all of them together at most ``upload_bytes_per_s`` (a token bucket). Holders announce
themselves under :func:`release_key` (the release digest) and :func:`name_key` in the
DHT and at the rendezvous points.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from p2pnode.net.framing import FramedStream
from p2pnode.net.host import NodeNet
from p2pnode.release.store import LocalRelease, ReleaseStore

__all__ = [
    "RELEASE_PROTOCOL",
    "ChunkServer",
    "SwarmError",
    "UploadLimits",
    "name_key",
    "receive_payload",
    "release_key",
    "request",
    "upload_limits",
]

RELEASE_PROTOCOL = "/hearth/release/1"
FRAME = 256 * 1024  # payload bytes per data frame (the framing allows 1 MiB)
MAX_REQUEST = 1024
MAX_PAYLOAD = 64 * (1 << 20)  # the largest chunk or manifest an answer may announce


class SwarmError(Exception):
    """A peer answered a request with an error (``code``: ``busy``, ``not_held``…)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


def release_key(digest: str) -> str:
    """The DHT / rendezvous key under which holders of release ``digest`` announce."""
    return f"release-{digest}"


def name_key(name: str) -> str:
    """The key under which holders of any release of model ``name`` announce."""
    return f"release-name-{name}"


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What this box may give the swarm: chunks at once, and bytes per second."""

    max_uploads: int = 4
    upload_bytes_per_s: float = math.inf
    spread_s: float = 5.0  # a seed hands one chunk out once per this while some are ungiven

    def __post_init__(self) -> None:
        if self.max_uploads < 1 or not self.upload_bytes_per_s > 0 or self.spread_s < 0:
            raise ValueError("max_uploads must be >= 1, upload_bytes_per_s > 0 and spread_s >= 0")


def upload_limits(max_uploads: int, upload_mbps: float) -> UploadLimits:
    """The limits for a cap in megabits per second (0: none), as config and flags say it."""
    rate = upload_mbps * 1e6 / 8 if upload_mbps > 0 else math.inf
    return UploadLimits(max_uploads=max_uploads, upload_bytes_per_s=rate)


@dataclass
class _Bucket:
    rate: float
    burst: float
    level: float = 0.0
    at: float = field(default_factory=time.monotonic)

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes may go out."""
        if math.isinf(self.rate):
            return
        while True:
            now = time.monotonic()
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
            self.at = now
            if self.level >= n or self.level >= self.burst:
                self.level -= n
                return
            await trio.sleep((min(n, self.burst) - self.level) / self.rate)


@dataclass
class _Given:
    """A seed's record of which chunks it handed out, and when."""

    last: dict[int, float] = field(default_factory=dict)


class ChunkServer:
    """Serves the releases of a :class:`ReleaseStore` on ``/hearth/release/1``."""

    def __init__(
        self,
        store: ReleaseStore,
        limits: UploadLimits | None = None,
        *,
        publishers: Iterable[bytes] | None = None,
    ) -> None:
        """``publishers``: serve only their releases (``None``: any this store holds)."""
        self.store = store
        self.limits = limits or UploadLimits()
        self.publishers = None if publishers is None else frozenset(publishers)
        self._slots = trio.Semaphore(self.limits.max_uploads)
        rate = self.limits.upload_bytes_per_s
        self._bucket = _Bucket(rate=rate, burst=max(FRAME, 0.25 * rate if rate < 1e18 else FRAME))
        self._given: dict[str, _Given] = {}
        self.stats: dict[str, int] = {
            "uploaded_bytes": 0,
            "chunks_sent": 0,
            "busy": 0,
            "spread": 0,
            "bad_requests": 0,
        }

    def install(self, net: NodeNet) -> None:
        net.set_handler(RELEASE_PROTOCOL, self.serve)

    async def serve(self, fs: FramedStream) -> None:
        while True:
            raw = await fs.receive(timeout=60)
            if raw is None:
                return
            try:
                req = _decode_request(raw)
                await self._answer(fs, req)
            except SwarmError as e:
                if e.code == "bad_request":
                    self.stats["bad_requests"] += 1
                await fs.send(_pack({"ok": False, "error": e.code, "detail": e.detail[:200]}))

    async def _answer(self, fs: FramedStream, req: dict[str, Any]) -> None:
        op = req["op"]
        if op == "find":
            name = req.get("name")
            if not isinstance(name, str) or not 0 < len(name) <= 64:
                raise SwarmError("bad_request", "find needs a model name")
            digests = [
                r.digest for r in self.store.held() if r.manifest.name == name and self._serves(r)
            ]
            await fs.send(_pack({"ok": True, "digests": digests[:32]}))
            return
        local = self._release(req)
        if op == "manifest":
            await self._send_payload(fs, local.release.encode(), meter=False)
        elif op == "have":
            await fs.send(_pack({"ok": True, "have": local.bitmap(), "held": local.held}))
        elif op == "chunk":
            i = req.get("i")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < local.total:
                raise SwarmError("bad_request", f"chunk index must be in [0, {local.total})")
            if not local.has(i):
                raise SwarmError("not_held", f"chunk {i} is not here yet")
            if self._slots.value == 0:  # before _spread: a chunk refused is not given out
                self.stats["busy"] += 1
                raise SwarmError("busy", f"all {self.limits.max_uploads} upload slots in use")
            self._spread(local, i)
            async with self._slots:
                data = await trio.to_thread.run_sync(local.read, i)
                await self._send_payload(fs, data, meter=True)
            self.stats["chunks_sent"] += 1
        else:
            raise SwarmError("bad_request", f"unknown op {op!r}")

    def _release(self, req: dict[str, Any]) -> LocalRelease:
        digest = req.get("digest")
        if not isinstance(digest, str) or len(digest) != 64:
            raise SwarmError("bad_request", "digest must be 64 hex characters")
        local = self.store.get(digest.lower())
        if local is None or not self._serves(local):
            raise SwarmError("not_held", f"release {digest[:16]}… is not held here")
        return local

    def _serves(self, local: LocalRelease) -> bool:
        return self.publishers is None or local.manifest.publisher in self.publishers

    def _spread(self, local: LocalRelease, i: int) -> None:
        """A seed gives each chunk out once before it gives any out twice (within
        ``spread_s``), so the swarm, not the seed's uplink, makes the copies."""
        if not local.complete or self.limits.spread_s <= 0:
            return
        given = self._given.setdefault(local.digest, _Given())
        if len(given.last) >= local.total:
            given.last.clear()  # every chunk went out once: a new round
        now = time.monotonic()
        last = given.last.get(i)
        if last is not None and now - last < self.limits.spread_s:
            self.stats["spread"] += 1
            raise SwarmError("spread", "given out moments ago: ask the peers that have it")
        given.last[i] = now

    async def _send_payload(self, fs: FramedStream, data: bytes, *, meter: bool) -> None:
        await fs.send(_pack({"ok": True, "size": len(data)}))
        for start in range(0, len(data), FRAME):
            part = data[start : start + FRAME]
            if meter:
                await self._bucket.take(len(part))
            await fs.send(part)
            if meter:
                self.stats["uploaded_bytes"] += len(part)


# ---------------------------------------------------------------------- the client side
async def request(fs: FramedStream, req: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Send ``req`` and return the answer's header; raise :class:`SwarmError` for an
    error answer, :class:`~p2pnode.net.NetError` when the stream fails."""
    await fs.send(_pack(req))
    raw = await fs.receive(timeout=timeout)
    if raw is None:
        raise SwarmError("closed", "the peer ended the stream")
    head = _unpack(raw)
    if head.get("ok") is not True:
        code = head.get("error")
        raise SwarmError(
            code if isinstance(code, str) else "bad_answer", str(head.get("detail", ""))
        )
    return head


async def receive_payload(fs: FramedStream, head: dict[str, Any], timeout: float = 30) -> bytes:
    """The ``size`` bytes announced in ``head``, from the frames that follow."""
    size = head.get("size")
    if not isinstance(size, int) or not 0 <= size <= MAX_PAYLOAD:
        raise SwarmError("bad_answer", f"announced size {size!r}")
    buf = bytearray()
    while len(buf) < size:
        part = await fs.receive(timeout=timeout)
        if part is None or len(buf) + len(part) > size:
            raise SwarmError("bad_answer", "the payload does not match its announced size")
        buf += part
    return bytes(buf)


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(raw: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=1 << 20)
    except Exception as e:
        raise SwarmError("bad_answer", f"undecodable frame: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise SwarmError("bad_answer", "a frame must be a map")
    return obj


def _decode_request(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_REQUEST:
        raise SwarmError("bad_request", f"request of {len(raw)} bytes (max {MAX_REQUEST})")
    try:
        req = _unpack(raw)
    except SwarmError as e:
        raise SwarmError("bad_request", e.detail) from None
    if not isinstance(req.get("op"), str):
        raise SwarmError("bad_request", "a request names its op")
    return req
