"""Framed, deadline-bound, heart-beating streams on top of a libp2p stream.

A raw libp2p stream is a byte pipe with three traps (measured on py-libp2p 0.8.1): a
killed peer reads as a clean EOF, a frozen peer is never noticed, and there is no read
deadline. :class:`FramedStream` removes all three:

Wire format — every frame is ``kind (1 byte) | length (4 bytes, big-endian) | payload``:

======  =====  ===========================================================
kind    value  meaning
======  =====  ===========================================================
DATA    0      one application message (already encoded by the caller)
END     1      explicit, clean end of stream (payload: optional trailer)
ERROR   2      the sender gives up; payload is a UTF-8 reason (≤ 1 KiB)
PING    3      heartbeat; empty; sent when the writer was idle for a while
======  =====  ===========================================================

* A frame longer than ``max_frame`` is refused before sending
  (:class:`~p2pnode.net.errors.FrameTooLarge`) and, when received, resets the stream.
* Running inside ``async with``, a background task sends PING every
  ``heartbeat_interval`` seconds of write silence, and every read fails with
  :class:`~p2pnode.net.errors.PeerTimeout` once ``idle_timeout`` seconds pass without
  *any* frame from the peer — so a SIGSTOPped peer is detected in ``idle_timeout``
  seconds (8 s by default) even while the application waits longer for real data.
* Leaving the ``async with`` block by an exception sends an ERROR frame naming the
  exception type, then resets the stream.
* EOF or reset before an END frame raises :class:`~p2pnode.net.errors.StreamBroken`.

Example::

    async with FramedStream(raw_stream) as fs:
        await fs.send(b"bid")
        reply = await fs.receive(timeout=5)   # bytes, or None after END
        await fs.send_end()
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import trio

from p2pnode.net.errors import (
    FrameTooLarge,
    NetError,
    PeerTimeout,
    RemoteStreamError,
    StreamBroken,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FrameKind",
    "FramedStream",
    "StreamLimits",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAME = 1 << 20  # 1 MiB: one token chunk or a long prompt fits easily
_HEADER = struct.Struct(">BI")
_MAX_ERROR_TEXT = 1024
_READ_CHUNK = 64 * 1024


class FrameKind(enum.IntEnum):
    """The four frame kinds on a Hearth stream."""

    DATA = 0
    END = 1
    ERROR = 2
    PING = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamLimits:
    """Timing and size limits of one framed stream.

    ``idle_timeout`` must exceed ``heartbeat_interval`` by a comfortable margin (the
    default 8 s vs 2 s tolerates three lost beats); ``read_timeout`` is the default
    deadline of one :meth:`FramedStream.receive` call while the peer stays alive.
    """

    max_frame: int = DEFAULT_MAX_FRAME
    heartbeat_interval: float = 2.0
    idle_timeout: float = 8.0
    read_timeout: float = 60.0
    write_timeout: float = 8.0

    def __post_init__(self) -> None:
        if self.max_frame <= 0:
            raise ValueError("max_frame must be positive")
        if not 0 < self.heartbeat_interval < self.idle_timeout:
            raise ValueError("need 0 < heartbeat_interval < idle_timeout")
        if self.read_timeout <= 0 or self.write_timeout <= 0:
            raise ValueError("timeouts must be positive")


class FramedStream:
    """One framed stream to one peer; use it as ``async with`` to run heartbeats.

    ``peer_id`` and ``protocol`` say who is on the other end and what was negotiated.
    Reads and writes each hold their own lock, so one task may read while another writes.
    """

    def __init__(
        self,
        stream: Any,
        *,
        limits: StreamLimits | None = None,
        peer_id: str = "",
        protocol: str = "",
    ) -> None:
        self._stream = stream
        self.limits = limits or StreamLimits()
        self.peer_id = peer_id
        self.protocol = protocol
        self._buf = bytearray()
        self._write_lock = trio.Lock()
        self._read_lock = trio.Lock()
        self._last_write = trio.current_time()
        self._last_frame_in = trio.current_time()
        self._ended = False  # we saw their END
        self._closed = False  # we sent END/ERROR or reset
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._heartbeat_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            await self._nursery_cm.__aexit__(None, None, None)
        finally:
            if exc is not None and not self._closed:
                # tell the peer why (an ERROR frame, never a clean END), then abort
                if isinstance(exc, Exception):
                    with trio.move_on_after(1), contextlib.suppress(NetError):
                        await self.send_error(f"{type(exc).__name__}")
                await self.reset()
            else:
                await self._close_quietly()
        return None

    async def _heartbeat_loop(self) -> None:
        interval = self.limits.heartbeat_interval
        while not self._closed:
            wait = self._last_write + interval - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
                continue
            try:
                await self._write_frame(FrameKind.PING, b"")
            except NetError:
                return  # the reader will notice too; nothing else to do here

    # -- writing -----------------------------------------------------------------------
    async def send(self, payload: bytes) -> None:
        """Send one DATA frame (raises FrameTooLarge, PeerTimeout or StreamBroken)."""
        await self._write_frame(FrameKind.DATA, payload)

    async def send_end(self, trailer: bytes = b"") -> None:
        """Send the explicit END frame and half-close our side."""
        await self._write_frame(FrameKind.END, trailer)
        self._closed = True
        try:
            await self._stream.close_write()
        except Exception:  # the END frame is what counts; a failed FIN is harmless
            logger.debug("close_write failed after END", exc_info=True)

    async def send_error(self, message: str) -> None:
        """Send an ERROR frame with a reason; the stream is finished afterwards."""
        data = message.encode("utf-8", "replace")[:_MAX_ERROR_TEXT]
        try:
            await self._write_frame(FrameKind.ERROR, data)
        finally:
            self._closed = True

    async def _write_frame(self, kind: FrameKind, payload: bytes) -> None:
        if len(payload) > self.limits.max_frame:
            raise FrameTooLarge(
                f"frame of {len(payload)} bytes exceeds the {self.limits.max_frame}-byte maximum"
            )
        if self._closed:
            raise StreamBroken("stream already finished on our side")
        frame = _HEADER.pack(kind, len(payload)) + payload
        async with self._write_lock:
            try:
                with trio.fail_after(self.limits.write_timeout):
                    await self._stream.write(frame)
            except trio.TooSlowError as e:
                raise PeerTimeout(
                    f"peer {self.peer_id} did not take {len(frame)} bytes within "
                    f"{self.limits.write_timeout:g} s"
                ) from e
            except NetError:
                raise
            except Exception as e:  # StreamClosed/Reset/… from libp2p
                raise StreamBroken(f"write to {self.peer_id} failed: {e!r}") from e
            self._last_write = trio.current_time()
            self.frames_out += 1
            self.bytes_out += len(frame)

    # -- reading -----------------------------------------------------------------------
    async def receive(self, timeout: float | None = None) -> bytes | None:
        """Return the next DATA payload, or ``None`` once the peer sent END.

        Raises :class:`PeerTimeout` when ``timeout`` (default ``limits.read_timeout``)
        passes or the peer is silent — no heartbeat either — for ``idle_timeout``;
        :class:`StreamBroken` on EOF/reset without END; :class:`RemoteStreamError` on an
        ERROR frame; :class:`FrameTooLarge` on an oversize frame.
        """
        kind, payload = await self.receive_frame(timeout)
        return payload if kind == FrameKind.DATA else None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        payload = await self.receive()
        if payload is None:
            raise StopAsyncIteration
        return payload

    async def receive_frame(self, timeout: float | None = None) -> tuple[FrameKind, bytes]:
        """Like :meth:`receive` but returns ``(kind, payload)``: DATA or END (trailer)."""
        if self._ended:
            return FrameKind.END, b""
        total = self.limits.read_timeout if timeout is None else timeout
        deadline = trio.current_time() + total if math.isfinite(total) else math.inf
        async with self._read_lock:
            while True:
                kind, payload = await self._read_frame(deadline)
                if kind == FrameKind.PING:
                    continue
                if kind == FrameKind.ERROR:
                    self._ended = True
                    raise RemoteStreamError(payload.decode("utf-8", "replace"))
                if kind == FrameKind.END:
                    self._ended = True
                return kind, payload

    async def _read_frame(self, deadline: float) -> tuple[FrameKind, bytes]:
        header = await self._read_exactly(_HEADER.size, deadline)
        raw_kind, length = _HEADER.unpack(header)
        if length > self.limits.max_frame:
            await self.reset()
            raise FrameTooLarge(
                f"peer {self.peer_id} announced a {length}-byte frame "
                f"(maximum {self.limits.max_frame})"
            )
        try:
            kind = FrameKind(raw_kind)
        except ValueError as e:
            await self.reset()
            raise StreamBroken(f"peer {self.peer_id} sent unknown frame kind {raw_kind}") from e
        payload = await self._read_exactly(length, deadline)
        self.frames_in += 1
        self.bytes_in += _HEADER.size + length
        return kind, payload

    async def _read_exactly(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            idle_deadline = self._last_frame_in + self.limits.idle_timeout
            now = trio.current_time()
            limit = min(deadline, idle_deadline)
            if now >= limit:
                what = "went silent (no heartbeat)" if idle_deadline <= deadline else "was too slow"
                raise PeerTimeout(f"peer {self.peer_id} {what} on {self.protocol}")
            with trio.move_on_after(limit - now):
                try:
                    chunk = await self._stream.read(_READ_CHUNK)
                except Exception as e:  # StreamEOF, StreamReset, connection errors
                    raise StreamBroken(
                        f"stream from {self.peer_id} ended without an end-of-stream frame "
                        f"({type(e).__name__})"
                    ) from e
                if not chunk:
                    raise StreamBroken(
                        f"stream from {self.peer_id} ended without an end-of-stream frame"
                    )
                self._buf += chunk
                self._last_frame_in = trio.current_time()  # any bytes prove liveness
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    # -- teardown ----------------------------------------------------------------------
    async def reset(self) -> None:
        """Abort the stream at once (the peer sees a reset, never a clean end)."""
        self._closed = True
        try:
            await self._stream.reset()
        except Exception:
            logger.debug("reset failed", exc_info=True)

    async def _close_quietly(self) -> None:
        self._closed = True
        with trio.move_on_after(2):
            try:
                await self._stream.close()
            except Exception:
                logger.debug("close failed", exc_info=True)
