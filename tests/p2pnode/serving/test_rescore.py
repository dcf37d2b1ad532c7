"""Engine.rescore on the real SmolLM2 weights: what a verifier runs, against generation."""

from __future__ import annotations

import dataclasses

import pytest

from market.protocol import verify
from p2pnode.serving import BadRequestError, Engine, GenerationRequest, LoadedModel

CHAT = [{"role": "user", "content": "Tell me a short story about a lighthouse."}]


def _tight(model_id: str) -> verify.Tolerances:
    """fp32 against itself: nothing may differ beyond rounding."""
    return verify.Tolerances(
        model_id=model_id,
        dtype="float32",
        logprob=1e-3,
        logprob_mean=1e-4,
        greedy_gap=1e-3,
        tie_margin=1e-3,
        boundary_k=1e-3,
        boundary_p=1e-4,
        near_tie_rate=0.0,
    )


def _claim(engine: Engine, req: GenerationRequest, chunk: object, **over: object) -> verify.Claim:
    params = verify.Params(
        temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, seed=req.seed
    )
    ids = tuple(chunk.token_ids)  # type: ignore[attr-defined]
    lps = tuple(lp.logprob for lp in chunk.logprobs)  # type: ignore[attr-defined]
    base = dict(model_id=engine.model_id, params=params, token_ids=ids, logprobs=lps)
    base.update(over)
    return verify.Claim(**base)  # type: ignore[arg-type]


JOBS = [
    GenerationRequest(messages=CHAT, max_tokens=24, temperature=0.0, logprobs=True),
    GenerationRequest(
        messages=CHAT, max_tokens=24, temperature=0.8, top_p=0.9, top_k=50, seed=5, logprobs=True
    ),
    GenerationRequest(
        prompt="Once upon a time", max_tokens=24, temperature=1.0, seed=9, logprobs=True
    ),
]


async def test_rescore_reproduces_generation(smollm: LoadedModel) -> None:
    """Every generated token is the verifier's own choice, with the same raw logprob."""
    async with Engine(smollm, max_batch=4, max_model_len=256) as engine:
        for req in JOBS:
            req = dataclasses.replace(req, ignore_eos=True)
            out = await engine.complete(req)
            r = await engine.rescore(req, out.token_ids, top_n=3)
            assert r.choice == out.token_ids
            assert set(r.margin) == {0.0}
            assert r.sampler == verify.SAMPLER_ID and r.dtype == "float32"
            assert r.prompt_tokens == out.prompt_tokens
            assert all(len(t) == 3 for t in r.top_ids)
            if req.temperature == 0.0:
                assert [t[0] for t in r.top_ids] == list(out.token_ids)
            v = verify.judge(
                _claim(engine, req, out),
                verify.Rescore(**dataclasses.asdict(r)),
                _tight(engine.model_id),
            )
            assert v.ok, v.detail
            assert v.max_logprob_diff < 1e-4
            # the same tokens claimed under another seed are not what the sampler yields
            if req.seed is not None:
                other = await engine.rescore(req, out.token_ids, seed=req.seed + 1)
                bad = verify.judge(
                    _claim(
                        engine,
                        req,
                        out,
                        params=dataclasses.replace(
                            _claim(engine, req, out).params, seed=req.seed + 1
                        ),
                    ),
                    verify.Rescore(**dataclasses.asdict(other)),
                    _tight(engine.model_id),
                )
                assert not bad.ok and bad.failed[0].reason == "not_sampled"


async def test_resumed_jobs_continue_the_same_stream(smollm: LoadedModel) -> None:
    """Positions count from the first completion token, resumed ones included."""
    req = GenerationRequest(
        messages=CHAT, max_tokens=20, temperature=0.9, seed=77, ignore_eos=True, logprobs=True
    )
    async with Engine(smollm, max_batch=2, max_model_len=256) as engine:
        full = await engine.complete(req)
        resumed = dataclasses.replace(req, resume_token_ids=full.token_ids[:6])
        rest = await engine.complete(resumed)
        assert full.token_ids[6:] == rest.token_ids
        r = await engine.rescore(resumed, full.token_ids)
        assert r.choice == full.token_ids
        with pytest.raises(BadRequestError, match="resumed"):
            await engine.rescore(resumed, full.token_ids[1:])
        with pytest.raises(BadRequestError, match="seed"):
            await engine.rescore(dataclasses.replace(req, seed=None), full.token_ids)
        with pytest.raises(BadRequestError, match="temperature"):
            await engine.rescore([1, 2, 3], [4, 5])
        ids = engine.tokenizer.encode(
            engine.tokenizer.apply_chat_template(CHAT), add_special_tokens=False
        )
        by_ids = await engine.rescore(ids, full.token_ids, temperature=0.9, seed=77)
        assert by_ids.logprobs == r.logprobs and by_ids.choice == r.choice
