"""The engine against Hugging Face transformers on the same weights, and against itself."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import trio

from p2pnode.serving import (
    BadRequestError,
    Engine,
    GenerationChunk,
    GenerationRequest,
    LoadedModel,
)
from p2pnode.serving.core import EngineCore
from p2pnode.serving.device import DevicePlan

PROMPTS = [
    "The capital of France is",
    "Write a haiku about rain.",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    "Once upon a time",
    "The quick brown fox",
    "Translate to French: cheese",
    "Q: What is 7 times 8?\nA:",
    "My favourite colour is",
    "import numpy as np\n",
    "The sun rises in the",
    "List three fruits:",
    "Hello! How are you",
    "In 1969, humans",
    "Water boils at",
    "The opposite of hot is",
]
NEW = 10


def _ids(m: LoadedModel, text: str) -> list[int]:
    return m.tokenizer.encode(text)


async def _run_all(engine: Engine, reqs: list[GenerationRequest]) -> list[GenerationChunk]:
    out: list[GenerationChunk | None] = [None] * len(reqs)

    async def one(i: int) -> None:
        out[i] = await engine.complete(reqs[i])

    async with trio.open_nursery() as n:
        for i in range(len(reqs)):
            n.start_soon(one, i)
    return [o for o in out if o is not None]


def _greedy(m: LoadedModel, text: str, ignore_eos: bool = True, **kw: Any) -> GenerationRequest:
    return GenerationRequest(
        prompt_token_ids=_ids(m, text),
        max_tokens=NEW,
        temperature=0.0,
        ignore_eos=ignore_eos,
        logprobs=True,
        **kw,
    )


async def test_greedy_matches_transformers(smollm: LoadedModel, hf_model: Any) -> None:
    async with Engine(smollm, max_batch=16, max_model_len=256) as engine:
        # both stop at end-of-sequence (HF's min_new_tokens would mask EOS instead)
        got = await _run_all(engine, [_greedy(smollm, p, ignore_eos=False) for p in PROMPTS])
    for text, res in zip(PROMPTS, got, strict=True):
        ids = torch.tensor([_ids(smollm, text)])
        with torch.inference_mode():
            ref = hf_model.generate(
                ids,
                max_new_tokens=NEW,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=2,
            )
        ref_tokens = ref.sequences[0, ids.shape[1] :].tolist()
        assert list(res.token_ids) == ref_tokens, text
        ref_lp = [
            torch.log_softmax(lg[0].float(), -1)[t].item()
            for lg, t in zip(ref.logits, ref_tokens, strict=True)
        ]
        ours = [lp.logprob for lp in res.logprobs]
        assert max(abs(a - b) for a, b in zip(ours, ref_lp, strict=True)) < 1e-4, text


async def test_batched_equals_unbatched_and_score(smollm: LoadedModel) -> None:
    reqs = [_greedy(smollm, p) for p in PROMPTS[:6]]
    async with Engine(smollm, max_batch=8, max_model_len=256) as engine:
        batched = await _run_all(engine, reqs)
        single = [await engine.complete(r) for r in reqs]
        for b, s, r in zip(batched, single, reqs, strict=True):
            assert b.token_ids == s.token_ids
            assert (
                max(abs(x.logprob - y.logprob) for x, y in zip(b.logprobs, s.logprobs, strict=True))
                < 1e-4
            )
            scored = await engine.score(list(r.prompt_token_ids or []), list(b.token_ids))
            assert max(abs(x - y.logprob) for x, y in zip(scored, b.logprobs, strict=True)) < 1e-4


async def test_preemption_under_tiny_kv_budget(smollm: LoadedModel) -> None:
    reqs = [_greedy(smollm, p) for p in PROMPTS[:6]]
    async with Engine(smollm, max_batch=8, max_model_len=256) as roomy:
        want = [r.token_ids for r in await _run_all(roomy, reqs)]
    # 3 blocks of 16 positions: two short sequences at most, so others get preempted
    kv_mb = 3 * 16 * 30 * 2 * 3 * 64 * 4 / 2**20
    async with Engine(
        smollm, max_batch=8, max_model_len=256, kv_cache_mb=kv_mb, block_size=16
    ) as tight:
        got = [r.token_ids for r in await _run_all(tight, reqs)]
        assert tight.stats.preemptions > 0
    assert got == want


async def test_resume_equals_uninterrupted(smollm: LoadedModel) -> None:
    async with Engine(smollm, max_batch=4, max_model_len=256) as engine:
        full = await engine.complete(_greedy(smollm, PROMPTS[4]))
        cut = 4
        rest = await engine.complete(
            GenerationRequest(
                prompt_token_ids=_ids(smollm, PROMPTS[4]),
                resume_token_ids=full.token_ids[:cut],
                max_tokens=NEW,
                temperature=0.0,
                ignore_eos=True,
                logprobs=True,
            )
        )
    assert full.token_ids[cut:] == rest.token_ids
    assert rest.completion_tokens == NEW
    assert (
        max(
            abs(a.logprob - b.logprob)
            for a, b in zip(full.logprobs[cut:], rest.logprobs, strict=True)
        )
        < 1e-4
    )


async def test_seeded_sampling_reproducible_regardless_of_batch(smollm: LoadedModel) -> None:
    def req(seed: int) -> GenerationRequest:
        return GenerationRequest(
            prompt="Tell me a story:",
            max_tokens=12,
            temperature=0.9,
            top_p=0.9,
            top_k=50,
            seed=seed,
            ignore_eos=True,
        )

    async with Engine(smollm, max_batch=8, max_model_len=256) as engine:
        alone = await engine.complete(req(7))
        crowd = await _run_all(engine, [req(1), req(7), req(2), req(7)])
        other = crowd[0]
    assert crowd[1].token_ids == alone.token_ids == crowd[3].token_ids
    assert other.token_ids != alone.token_ids


async def test_stop_strings_max_tokens_and_chat(smollm: LoadedModel) -> None:
    async with Engine(smollm, max_batch=4, max_model_len=256) as engine:
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        free = await engine.complete(
            GenerationRequest(messages=msgs, max_tokens=20, temperature=0.0)
        )
        assert "Paris" in free.text
        assert free.finish_reason == "stop"  # ended on the end-of-turn token
        stopped = await engine.complete(
            GenerationRequest(messages=msgs, max_tokens=20, temperature=0.0, stop=["Paris"])
        )
        assert stopped.finish_reason == "stop"
        assert stopped.text == free.text[: free.text.index("Paris")]
        short = await engine.complete(
            GenerationRequest(messages=msgs, max_tokens=3, temperature=0.0)
        )
        assert short.finish_reason == "length" and len(short.token_ids) == 3
        assert free.text.startswith(short.text)
        zero = await engine.complete(GenerationRequest(prompt="Hi", max_tokens=0))
        assert zero.finish_reason == "length" and zero.token_ids == ()


async def test_streamed_text_joins_to_decode(smollm: LoadedModel) -> None:
    prompt = "Écris une phrase en français avec des accents, puis un emoji: "
    async with Engine(smollm, max_batch=2, max_model_len=256) as engine:
        pieces: list[str] = []
        ids: list[int] = []
        async for c in engine.generate(
            GenerationRequest(prompt=prompt, max_tokens=30, temperature=0.0, ignore_eos=True)
        ):
            pieces.append(c.text)
            ids.extend(c.token_ids)
    assert "".join(pieces) == smollm.tokenizer.decode(ids)


async def test_cancellation_and_bad_requests_leave_engine_serving(smollm: LoadedModel) -> None:
    async with Engine(smollm, max_batch=4, max_model_len=128) as engine:
        seen = 0
        stream = engine.generate(
            GenerationRequest(
                prompt="Count forever:", max_tokens=100, temperature=0.0, ignore_eos=True
            )
        )
        async for _chunk in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()
        bad = [
            GenerationRequest(prompt="x", model="no-such-model"),
            GenerationRequest(prompt="x", max_tokens=-1),
            GenerationRequest(prompt_token_ids=[100] * 200),
            GenerationRequest(prompt_token_ids=[10**9]),
            GenerationRequest(),
        ]
        for r in bad:
            with pytest.raises(BadRequestError):
                async for _ in engine.generate(r):
                    pass
        # explicit cancel by id ends the stream with "cancelled"
        chunks: list[GenerationChunk] = []
        async for c in engine.generate(
            GenerationRequest(prompt="Go:", max_tokens=100, ignore_eos=True, request_id="r1")
        ):
            chunks.append(c)
            if len(chunks) == 2:
                engine.cancel("r1")
        assert chunks[-1].finish_reason == "cancelled"
        ok = await engine.complete(
            GenerationRequest(
                prompt="The capital of France is",
                max_tokens=4,
                temperature=0.0,
                model=engine.model_id,
            )
        )
        assert ok.finish_reason == "length" and len(ok.token_ids) == 4
        assert engine.stats.steps > 0


async def test_build_runs_on_the_loop_thread_and_failures_reach_start(
    smollm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    with pytest.raises(ValueError, match="unsupported device"):
        await Engine(smollm, device="tpu").start()
    with trio.move_on_after(0.01):  # cancelled while building: the thread stops by itself
        await Engine(smollm).start()
    built_on: list[threading.Thread] = []
    build = EngineCore.build

    def spy(self: EngineCore) -> DevicePlan:
        built_on.append(threading.current_thread())
        return build(self)

    monkeypatch.setattr(EngineCore, "build", spy)
    engine = Engine(smollm, max_batch=2, max_model_len=64)
    async with engine:
        assert built_on == [engine._thread]  # one thread for every torch call (OpenMP)
        ok = await engine.complete(GenerationRequest(prompt="Hi", max_tokens=2, temperature=0))
        assert len(ok.token_ids) == 2
    assert engine._thread is None


def test_content_address_and_chat_template(smollm: LoadedModel) -> None:
    assert smollm.model_id.startswith("sha256:") and len(smollm.model_id) == 71
    text = smollm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>assistant\n")
    ids = smollm.tokenizer.encode(text)
    assert ids.count(1) == 3  # <|im_start|> is one special token
