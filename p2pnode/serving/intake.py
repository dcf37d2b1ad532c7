"""Intake: input processing off the event loop, one worker-thread call per burst.

Requests that arrive in the same trio scheduling round (32 submitted at once by a
benchmark, a gateway's burst) are processed together by one ``trio.to_thread`` call and
so reach the core together, as they did when they were processed on the event loop.
One thread hop per request let them trickle in instead, and the core's first step then
often ran one prompt where it could have run a full token budget of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from p2pnode.serving.api import GenerationRequest
from p2pnode.serving.input_processor import InputProcessor
from p2pnode.serving.request import EngineRequest

__all__ = ["Intake"]


@dataclass(slots=True)
class _Item:
    request: GenerationRequest
    key: str
    request_id: str
    done: trio.Event = field(default_factory=trio.Event)
    result: EngineRequest | None = None
    error: BaseException | None = None


class Intake:
    """Runs :meth:`InputProcessor.process` in a worker thread, a burst at a time."""

    def __init__(self, processor: InputProcessor) -> None:
        self._processor = processor
        self._next: list[_Item] = []  # the burst the next thread call will take

    async def process(
        self, request: GenerationRequest, *, key: str, request_id: str
    ) -> EngineRequest:
        """The processed request, or the error processing it raised (in this task)."""
        item = _Item(request, key, request_id)
        self._next.append(item)
        if len(self._next) == 1:  # the first of a burst runs it for all of it
            with trio.CancelScope(shield=True):  # the others wait on it; it takes ms
                await trio.lowlevel.checkpoint()  # the rest of this round joins
                burst, self._next = self._next, []
                try:
                    await trio.to_thread.run_sync(self._run, burst)
                finally:
                    for it in burst:
                        it.done.set()
        await item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _run(self, burst: list[_Item]) -> None:  # in a worker thread
        for it in burst:
            try:
                it.result = self._processor.process(
                    it.request, key=it.key, request_id=it.request_id
                )
            except Exception as e:  # reported to that request's task
                it.error = e
