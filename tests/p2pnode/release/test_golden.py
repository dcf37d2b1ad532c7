"""Golden outputs: computed by the real engine, and the check a node runs before it
switches to a release."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from market.protocol import SigningKey
from p2pnode.release import (
    GOLDEN_PROMPTS,
    GoldenMismatch,
    GoldenOutput,
    Manifest,
    check_golden,
    compute_golden,
    load_fresh,
)
from p2pnode.serving import Engine, GenerationRequest, LoadedModel
from tests.p2pnode.release.factory import ModelDirs, release_of


@pytest.fixture(scope="module")
def v1(models: ModelDirs) -> LoadedModel:
    return load_fresh(models.v1)


@pytest.fixture(scope="module")
def v2(models: ModelDirs) -> LoadedModel:
    return load_fresh(models.v2)


def _engine(loaded: LoadedModel, dtype: torch.dtype = torch.float32) -> Engine:
    return Engine(loaded, device="cpu", dtype=dtype, max_batch=4, max_model_len=256, num_threads=1)


def _manifest(
    models: ModelDirs, key: SigningKey, golden: tuple[GoldenOutput, ...], **kw: object
) -> Manifest:
    kw.setdefault("address", models.address_v1)
    return release_of(models.v1, key, 1, golden=golden, chunk_size=1 << 20, **kw).manifest  # type: ignore[arg-type]


async def test_golden_outputs_are_the_engines_greedy_completions(v1: LoadedModel) -> None:
    golden = await compute_golden(v1, threads=1)
    assert [g.prompt for g in golden] == list(GOLDEN_PROMPTS)
    async with _engine(v1) as engine:
        for g in golden:
            assert g.max_tokens == 16 and len(g.token_ids) == 16
            done = await engine.complete(
                GenerationRequest(prompt=g.prompt, max_tokens=16, temperature=0.0)
            )
            assert g.token_ids == done.token_ids


async def test_the_release_passes_its_own_check_in_float32_and_bfloat16(
    models: ModelDirs, publisher: SigningKey, v1: LoadedModel
) -> None:
    manifest = _manifest(models, publisher, await compute_golden(v1, threads=1))
    async with _engine(v1) as engine:
        await check_golden(engine, manifest)
    async with _engine(v1, torch.bfloat16) as engine:
        assert engine.dtype == "bfloat16"
        await check_golden(engine, manifest)  # another precision, within its gap


async def test_an_engine_of_another_release_is_refused(
    models: ModelDirs, publisher: SigningKey, v1: LoadedModel, v2: LoadedModel
) -> None:
    golden = await compute_golden(v1, threads=1)
    async with _engine(v2) as engine:
        with pytest.raises(
            GoldenMismatch, match=f"the engine serves {models.address_v2}, not smol v1"
        ):
            await check_golden(engine, _manifest(models, publisher, golden))
        # v2's weights under a manifest that names v2 but carries v1's outputs: the
        # outputs give it away.
        lying = _manifest(models, publisher, golden, address=models.address_v2)
        with pytest.raises(GoldenMismatch, match="nats below its own choice"):
            await check_golden(engine, lying)


async def test_a_changed_golden_token_is_caught_at_its_position(
    models: ModelDirs, publisher: SigningKey, v1: LoadedModel
) -> None:
    golden = list(await compute_golden(v1, threads=1))
    ids = list(golden[1].token_ids)
    ids[5] = (ids[5] + 1000) % 49152
    golden[1] = dataclasses.replace(golden[1], token_ids=tuple(ids))
    async with _engine(v1) as engine:
        with pytest.raises(
            GoldenMismatch,
            match=rf"golden output 1 \('def fibonacci\(n\):'\), token 5: .* expected token {ids[5]}",
        ):
            await check_golden(engine, _manifest(models, publisher, tuple(golden)))
