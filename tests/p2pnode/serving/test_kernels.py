"""CPU kernel choices (fused projections, oneDNN-packed weights, bf16) against plain torch."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from p2pnode.serving import Engine, GenerationRequest, LoadedModel, onednn
from p2pnode.serving.device import DevicePlan
from p2pnode.serving.model import LlamaConfig, LlamaModel
from p2pnode.serving.runner import ModelRunner

TINY = LlamaConfig(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=True,
)


def _tiny_loaded() -> LoadedModel:
    torch.manual_seed(0)
    model = LlamaModel(TINY)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)
    return LoadedModel(
        name="tiny",
        model_id="sha256:" + "0" * 64,
        config=TINY,
        tokenizer=None,  # type: ignore[arg-type]  # the runner never tokenizes
        state_dict=state,
        source=Path("."),
        hf_dir=Path("."),
        load_seconds=0.0,
    )


def _plan(packed: bool, dtype: torch.dtype = torch.float32) -> DevicePlan:
    return DevicePlan(torch.device("cpu"), dtype, 2, 64, 16, 8, packed)


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.skipif(not onednn.available(torch.float32), reason="torch built without oneDNN")
def test_packed_and_fused_runner_equals_plain_linears() -> None:
    loaded = _tiny_loaded()
    plain = ModelRunner(loaded, _plan(packed=False))
    packed = ModelRunner(loaded, _plan(packed=True))
    # every projection is packed (q|k|v, o, gate|up, down per layer, plus the lm_head)
    assert _count(packed.model, onednn.PackedLinear) == 4 * TINY.num_hidden_layers + 1
    assert _count(plain.model, onednn.PackedLinear) == 0
    prompt, completion = [5, 17, 33, 2, 90, 41], [7, 8, 9, 60, 3]
    a = plain.score(prompt, completion)
    b = packed.score(prompt, completion)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


def test_fused_projections_equal_separate_ones() -> None:
    loaded = _tiny_loaded()
    separate = loaded.build(torch.device("cpu"), torch.float32)
    fused = loaded.build(torch.device("cpu"), torch.float32)
    fused.fuse_projections()
    layer = fused.model.layers[0]
    assert layer.self_attn.qkv_proj is not None and layer.mlp.gate_up_proj is not None
    assert not hasattr(layer.self_attn, "q_proj")
    x = torch.randn(3, TINY.hidden_size)
    torch.testing.assert_close(fused.model.layers[0].mlp(x), separate.model.layers[0].mlp(x))
    qk1, v1 = fused.model.layers[1].self_attn._qkv(x)
    qk2, v2 = separate.model.layers[1].self_attn._qkv(x)
    torch.testing.assert_close(qk1, qk2)
    torch.testing.assert_close(v1, v2)


def test_pack_leaves_a_linear_alone_when_it_cannot_pack(monkeypatch: Any) -> None:
    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(onednn.PackedLinear, "__init__", broken)
    model = nn.Sequential(nn.Linear(8, 4, bias=False))
    assert onednn.pack_linears(model) == 0
    assert isinstance(model[0], nn.Linear)


@pytest.mark.skipif(not onednn.available(torch.bfloat16), reason="no bf16 oneDNN on this CPU")
async def test_bf16_engine_serves(smollm: LoadedModel) -> None:
    ids = smollm.tokenizer.encode("The capital of France is")
    req = GenerationRequest(
        prompt_token_ids=ids, max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=True
    )
    async with Engine(smollm, device="cpu", dtype=torch.bfloat16, max_model_len=128) as bf:
        assert bf.plan is not None and bf.plan.dtype == torch.bfloat16
        got = await bf.complete(req)
        no_lp = await bf.complete(dataclasses.replace(req, logprobs=False))
    assert len(got.token_ids) == 8 and got.token_ids == no_lp.token_ids
    assert all(math.isfinite(t.logprob) and t.logprob <= 0.0 for t in got.logprobs)
    assert no_lp.logprobs == ()


def test_grouped_decode_attention_ignores_garbage_and_gaps(monkeypatch: Any) -> None:
    """Padded decode calls (with an idle slot in the range) equal one call per row,
    even when the cache memory beyond each sequence starts out as NaN."""
    from p2pnode.serving import runner as runner_mod
    from p2pnode.serving.runner import SamplingSpec
    from p2pnode.serving.scheduler import ScheduledChunk

    loaded = _tiny_loaded()
    prompts = {0: [3, 4, 5, 6, 7, 8, 9], 1: [10, 11], 3: [12, 13, 14, 15, 16]}  # slot 2 idle
    specs = {str(s): SamplingSpec(temperature=0.0) for s in prompts}

    def run(max_group: int) -> tuple[list[float], int]:
        monkeypatch.setattr(runner_mod, "_MAX_GROUP", max_group)
        r = ModelRunner(loaded, DevicePlan(torch.device("cpu"), torch.float32, 4, 64, 16, 16))
        for kc, vc in zip(r.cache.k, r.cache.v, strict=True):
            kc.fill_(float("nan"))
            vc.fill_(float("nan"))
        last = {
            s: r.execute([ScheduledChunk(str(s), s, 0, tuple(p), True)], specs)[str(s)].token_id
            for s, p in prompts.items()
        }
        lps: list[float] = []
        lens = {s: len(p) for s, p in prompts.items()}
        groups = 0
        for _ in range(4):
            chunks = [ScheduledChunk(str(s), s, lens[s], (last[s],), True) for s in prompts]
            _ids, plan, _rows = r._build_plan(runner_mod._order(chunks))
            groups = len(plan.decode_groups)
            out = r.execute(chunks, specs)
            for s in prompts:
                lps.append(out[str(s)].logprob)
                last[s] = out[str(s)].token_id
                lens[s] += 1
        return lps, groups

    alone, n_alone = run(1)
    grouped, n_grouped = run(64)
    assert n_alone == 3 and n_grouped == 1
    assert all(math.isfinite(x) for x in grouped)
    assert max(abs(a - b) for a, b in zip(alone, grouped, strict=True)) < 1e-5
