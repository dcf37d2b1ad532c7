"""The openai-http backend over real HTTP against Hearth's own OpenAI-compatible app."""

from __future__ import annotations

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from p2pnode.serving import BadRequestError, Engine, GenerationRequest, LoadedModel
from p2pnode.serving.openai_http import OpenAIHTTPBackend, openai_app


async def test_backend_streams_same_tokens_and_logprobs(smollm: LoadedModel) -> None:
    async with Engine(smollm, max_batch=4, max_model_len=256) as engine:
        cfg = Config()
        cfg.bind = ["127.0.0.1:0"]
        cfg.accesslog = None
        stop_server = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    openai_app(engine),
                    cfg,
                    shutdown_trigger=stop_server.wait,
                    task_status=task_status,
                )
            )
            url = binds[0].replace("0.0.0.0", "127.0.0.1")
            backend = OpenAIHTTPBackend(url, engine.model_id)
            try:
                ids = smollm.tokenizer.encode("The capital of France is")
                req = GenerationRequest(
                    prompt_token_ids=ids,
                    max_tokens=6,
                    temperature=0.0,
                    ignore_eos=True,
                    logprobs=True,
                )
                direct = await engine.complete(req)
                got_ids: list[int] = []
                got_lp: list[float] = []
                text = ""
                async for c in backend.generate(req):
                    got_ids.extend(c.token_ids)
                    got_lp.extend(x.logprob for x in c.logprobs)
                    text += c.text
                assert tuple(got_ids) == direct.token_ids
                assert text == direct.text
                assert (
                    max(abs(a - b.logprob) for a, b in zip(got_lp, direct.logprobs, strict=True))
                    < 1e-6
                )
                chat = ""
                async for c in backend.generate(
                    GenerationRequest(
                        messages=[{"role": "user", "content": "Say hi"}],
                        max_tokens=5,
                        temperature=0.0,
                    )
                ):
                    chat += c.text
                assert chat
                with pytest.raises(BadRequestError):
                    async for _ in backend.generate(
                        GenerationRequest(prompt_token_ids=[100] * 300, max_tokens=2)
                    ):
                        pass
            finally:
                await backend.aclose()
                stop_server.set()
