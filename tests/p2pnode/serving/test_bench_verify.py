"""The verification rule on the real model, with the shipped tolerances (bench_verify)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from market.protocol import verify as V
from p2pnode import bench_verify as B
from p2pnode.serving import Engine, LoadedModel


def test_shipped_tolerances_cover_the_bundled_model(smollm: LoadedModel) -> None:
    table = B.load_tolerances()
    fp32 = table.get(smollm.model_id, "float32")
    bf16 = table.get(smollm.model_id, "bfloat16")
    assert fp32 is not None and bf16 is not None
    # fp32 set-ups agree to rounding; bf16 needs more, but far less than a substitute
    assert fp32.logprob <= 1e-3 < bf16.logprob < 2.0
    assert "hearth verify calibrate" in table.provenance["command"]


def test_cheating_models_keep_the_address_and_change_the_weights(smollm: LoadedModel) -> None:
    name = "model.layers.0.mlp.down_proj.weight"
    w = smollm.state_dict[name]
    for sub, most in (
        (B.quantised(smollm, 8, None), 0.01),
        (B.quantised(smollm, 4, 32), 0.2),
        (B.perturbed(smollm), 0.2),
    ):
        assert sub.model_id == smollm.model_id
        err = (sub.state_dict[name] - w).abs().mean() / w.abs().mean()
        assert 0 < float(err) < most
    q8 = B.quantised(smollm, 8, None).state_dict[name]
    rows = q8 / (w.abs().amax(dim=1, keepdim=True) / 127)
    assert torch.allclose(rows, rows.round(), atol=1e-3)  # on the int8 grid of its row
    half = B.half_depth(smollm)
    assert half.config.num_hidden_layers == -(-smollm.config.num_hidden_layers // 2)
    assert torch.equal(
        half.state_dict["model.layers.1.mlp.down_proj.weight"],
        smollm.state_dict["model.layers.2.mlp.down_proj.weight"],
    )


def test_evidence_bytes_per_token() -> None:
    claim = V.Claim(
        model_id="m",
        params=V.Params(temperature=0.7, top_p=0.9, top_k=0, seed=2**62),
        token_ids=tuple(range(64)),
        logprobs=(-0.5,) * 64,
    )
    per_token = B.evidence_bytes_per_token([claim])
    # 8 B per token; 4 chunks of 149 B (hash 32, signature 64, message id 16, two
    # timestamps, msgpack framing); under 140 B per job (prompt hash, parameters, seed)
    assert 8 + 4 * 149 / 64 < per_token < 8 + (4 * 149 + 140) / 64


async def test_honest_bf16_passes_and_substitutes_do_not(smollm: LoadedModel) -> None:
    """A few jobs of the benchmark's set, judged with the shipped bf16 tolerances."""
    tol = B.load_tolerances().get(smollm.model_id, "bfloat16")
    assert tol is not None
    jobs = [dataclasses.replace(j, max_tokens=24) for j in B.make_jobs(4, seed=3)]
    fast = B.Setup("test", threads=1, max_batch=4)
    async with Engine(
        smollm, device="cpu", num_threads=1, max_batch=2, max_model_len=768
    ) as verifier:

        async def verdicts(model: LoadedModel, setup: B.Setup) -> list[V.Verdict]:
            outs, _ = await B.generate(model, jobs, setup)
            claims = B._claims(smollm.model_id, jobs, outs)
            rescores, _ = await B.rescore_all(verifier, jobs, claims)
            return [V.judge(c, r, tol) for c, r in zip(claims, rescores, strict=True)]

        honest = await verdicts(smollm, dataclasses.replace(fast, dtype=torch.bfloat16))
        assert all(v.ok for v in honest), [v.detail for v in honest]
        swapped = await verdicts(B.perturbed(smollm), fast)
        assert not any(v.ok for v in swapped)
        cheap, _ = await B.generate(B.half_depth(smollm), jobs, fast)
        claims = await B._refill(verifier, jobs, [o.token_ids for o in cheap])
        rescores, _ = await B.rescore_all(verifier, jobs, claims)
        cheats = [V.judge(c, r, tol) for c, r in zip(claims, rescores, strict=True)]
        assert not any(v.ok for v in cheats)
        assert {v.failed[0].reason for v in cheats} <= {
            "greedy_gap",
            "not_sampled",
            "outside_top_k",
            "outside_top_p",
        }


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32)])
def test_quantised_rows_are_symmetric(smollm: LoadedModel, bits: int, group: int | None) -> None:
    w = smollm.state_dict["model.layers.3.self_attn.q_proj.weight"]
    q = B.quantised(smollm, bits, group).state_dict["model.layers.3.self_attn.q_proj.weight"]
    blocks = q.reshape(q.shape[0], -1, group or q.shape[1])
    levels = {len(torch.unique(b)) for b in blocks[:4].reshape(-1, blocks.shape[-1])}
    assert max(levels) <= 2**bits
    assert q.shape == w.shape
