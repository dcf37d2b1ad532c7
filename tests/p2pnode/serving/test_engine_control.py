"""Pause, resume and cancel of one request in a running engine, and where intake runs."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import trio

from p2pnode.serving import BadRequestError, Engine, GenerationChunk, GenerationRequest, LoadedModel
from p2pnode.serving.input_processor import InputProcessor
from p2pnode.serving.intake import Intake
from p2pnode.serving.request import EngineRequest


def _req(rid: str, max_tokens: int, prompt: str = "Count to one hundred:") -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt, max_tokens=max_tokens, temperature=0.0, ignore_eos=True, request_id=rid
    )


async def _until(cond: Callable[[], bool], timeout: float = 120.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.005)


async def test_a_paused_request_stops_stepping_while_another_goes_on(smollm: LoadedModel) -> None:
    async with Engine(smollm, max_batch=4, max_model_len=256) as engine:
        alone = await engine.complete(_req("ref", 40))
        tokens: dict[str, list[int]] = {"a": [], "b": []}
        last: dict[str, GenerationChunk] = {}

        async def consume(req: GenerationRequest) -> None:
            rid = req.request_id
            assert rid is not None
            async for chunk in engine.generate(req):  # read at once: nothing held back here
                tokens[rid].extend(chunk.token_ids)
                last[rid] = chunk

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, _req("a", 40))
            nursery.start_soon(consume, _req("b", 200, "Once upon a time"))
            await _until(lambda: len(tokens["a"]) >= 3)
            assert engine.pause("a")
            b0 = len(tokens["b"])
            await _until(lambda: len(tokens["b"]) >= b0 + 2)  # the pause has reached the core
            frozen = len(tokens["a"])
            b1 = len(tokens["b"])
            await _until(lambda: len(tokens["b"]) >= b1 + 12)
            assert len(tokens["a"]) == frozen  # twelve steps of b, none of a
            assert frozen < 40
            assert engine.resume("a")
            await _until(lambda: "a" in last and last["a"].finish_reason is not None)
            assert last["a"].finish_reason == "length"
            assert "b" not in last or last["b"].finish_reason is None
            engine.cancel("b")
        assert tokens["a"] == list(alone.token_ids)  # paused and resumed: same tokens
        assert last["b"].finish_reason == "cancelled"
        assert not engine.pause("a") and not engine.resume("nobody")  # ended: unknown


async def test_pause_and_cancel_before_the_core_has_the_request(smollm: LoadedModel) -> None:
    """With one place, the second request waits; pause and cancel reach it there too."""
    async with Engine(smollm, max_batch=2, max_model_len=128, max_pending=1) as engine:
        got: dict[str, list[GenerationChunk]] = {"a": [], "b": [], "c": []}

        async def consume(req: GenerationRequest) -> None:
            rid = req.request_id
            assert rid is not None
            async for chunk in engine.generate(req):
                got[rid].append(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, _req("a", 12))
            await _until(lambda: len(got["a"]) >= 1)
            nursery.start_soon(consume, _req("b", 8))
            nursery.start_soon(consume, _req("c", 100))
            await trio.sleep(0.2)  # b and c are waiting for a's place
            assert engine.pause("b")
            engine.cancel("c")
            await _until(lambda: bool(got["c"]))  # c ends at once, a still runs
            assert [c.finish_reason for c in got["c"]] == ["cancelled"]
            assert got["c"][0].prompt_tokens > 0
            await _until(lambda: got["a"][-1].finish_reason is not None)
            await trio.sleep(0.5)  # b now has the place, but paused: nothing comes
            assert got["b"] == []
            engine.resume("b")
        assert got["b"][-1].finish_reason == "length"
        assert sum(len(c.token_ids) for c in got["b"]) == 8


async def test_intake_runs_off_the_event_loop_and_ids_are_unique(
    smollm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    process = InputProcessor.process

    def spy(self: InputProcessor, request: GenerationRequest, **kw: str) -> EngineRequest:
        threads.append(threading.current_thread())
        return process(self, request, **kw)

    monkeypatch.setattr(InputProcessor, "process", spy)
    async with Engine(smollm, max_batch=2, max_model_len=128) as engine:
        chat = GenerationRequest(
            messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0.0
        )
        assert len((await engine.complete(chat)).token_ids) == 2
        assert threads and threads[0] is not threading.current_thread()
        assert threads[0] is not engine._thread  # nor on the core's thread
        with pytest.raises(BadRequestError):  # still raised up front, from the thread
            await engine.complete(GenerationRequest(prompt="x", model="no-such-model"))
        stream = engine.generate(_req("same", 50))
        first = await stream.__anext__()
        assert first.token_ids
        with pytest.raises(BadRequestError, match="already running"):
            await engine.complete(_req("same", 2))
        await stream.aclose()  # ends it; the id is free again
        assert (await engine.complete(_req("same", 2))).finish_reason == "length"
        # a burst (one scheduling round) is processed in one thread call, one a time
        # would trickle into the core; a bad request in it fails alone
        calls: list[int] = []
        run = Intake._run

        def count(self: Intake, burst: list[Any]) -> None:
            calls.append(len(burst))
            run(self, burst)

        monkeypatch.setattr(Intake, "_run", count)
        done: list[str | None] = []

        async def one(i: int) -> None:
            try:
                done.append((await engine.complete(_req(f"burst{i}", 2))).finish_reason)
            except BadRequestError:
                done.append("refused")

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, i)
            nursery.start_soon(one, 0)  # the same id twice: refused before intake
        assert calls == [6] and sorted(map(str, done)) == ["length"] * 6 + ["refused"]


async def test_a_closed_engine_is_freed_at_once(smollm: LoadedModel) -> None:
    """No reference cycle keeps an engine's weights alive (bench --repeat builds several)."""
    gc.disable()
    try:
        engine = Engine(smollm, max_batch=2, max_model_len=64)
        async with engine:
            assert len((await engine.complete(_req("x", 2))).token_ids) == 2
        ref = weakref.ref(engine)
        del engine
        assert ref() is None
    finally:
        gc.enable()
