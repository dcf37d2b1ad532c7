"""The core's way back to trio: chunks and scoring results posted onto the event loop.

The core's thread calls :meth:`TrioBridge.deliver` once per step with the chunks of
every request in the batch; one ``TrioToken.run_sync_soon`` callback then puts each on
its request's memory channel. The bridge holds no reference to the
:class:`~p2pnode.serving.engine.Engine`, so an engine (its weights and cache) is freed
as soon as its last user lets go of it, without waiting for the cycle collector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from p2pnode.serving.api import GenerationChunk
from p2pnode.serving.output_processor import Keyed

__all__ = ["TrioBridge"]


class TrioBridge:
    """Posts the core's output onto one trio run (``token``, set when the engine starts)."""

    def __init__(self) -> None:
        self.token: trio.lowlevel.TrioToken | None = None
        self.sends: dict[str, trio.MemorySendChannel[GenerationChunk]] = {}  # by key

    def post(self, fn: Callable[[], None]) -> None:
        assert self.token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(fn)

    def deliver(self, chunks: list[Keyed]) -> None:
        self.post(partial(self._send_all, chunks))

    def reply(self, done: Callable[[Any], None], result: Any) -> None:
        self.post(partial(done, result))

    def _send_all(self, chunks: list[Keyed]) -> None:  # on the trio thread
        for key, chunk in chunks:
            send = self.sends.get(key)
            if send is None:
                continue  # its reader has gone
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(chunk)
            if chunk.finish_reason is not None:
                send.close()
