"""A Llama-family transformer written plainly (Llama 2/3, SmolLM2, Mistral-style).

Grouped-query attention, rotary position embeddings (with the optional "llama3"
frequency scaling), RMSNorm, SwiGLU MLP, optionally tied input/output embeddings.
Parameter names follow Hugging Face ``LlamaForCausalLM`` so one state dict loads into
either implementation (the tests compare the two token for token).

The forward pass works on a *flattened* batch: the tokens of every sequence scheduled
this step are concatenated into one ``[N]`` vector, so all projections and MLPs run as
single ``[N, D]`` matrix products (that is where the time goes). Only attention looks
at sequence boundaries, through :class:`AttentionPlan`, which the model runner builds
once per step:

* each decode row (one new token) attends over exactly its own live prefix, a
  zero-copy slice ``cache[slot, :, :len]`` of the per-slot KV cache, with no mask.
  (One batched call over ``cache[:S, :, :max_len]`` with a padding mask was measured
  slower on CPU for mixed lengths: it reads every slot up to the *longest* sequence,
  and in the tail of a workload a few live sequences sit in sparse slots, so the
  batched call paid for ~all 32 slots. Attention here is memory-bound on K/V reads);
* each prefill chunk attends in its own call with a causal mask offset by the tokens
  already cached for that sequence (chunked prefill).

GQA trick: the ``g = n_heads / n_kv_heads`` query heads that share a KV head are
folded into the query-length axis (``[B, n_kv, g*T, hd]``), so keys and values are
never repeated in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionPlan", "KVCache", "LlamaConfig", "LlamaModel", "PrefillSegment"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LlamaConfig:
    """Shape of a Llama-family model (the fields of a Hugging Face ``config.json``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    head_dim: int = 0  # 0 = hidden_size // num_attention_heads
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    @property
    def hd(self) -> int:
        """Per-head dimension."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """Build from a Hugging Face ``config.json`` dictionary (unknown keys ignored)."""
        rope_scaling = d.get("rope_scaling")
        if rope_scaling is None and isinstance(d.get("rope_parameters"), dict):
            rp = d["rope_parameters"]  # transformers >= 5 spelling
            if rp.get("rope_type", "default") != "default":
                rope_scaling = dict(rp)
        theta = d.get("rope_theta")
        if theta is None and isinstance(d.get("rope_parameters"), dict):
            theta = d["rope_parameters"].get("rope_theta")
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta if theta is not None else 10000.0),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            head_dim=int(d.get("head_dim") or 0),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` a Hugging Face ``LlamaForCausalLM`` accepts."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "head_dim": self.hd,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        }


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """Rotary inverse frequencies ``[hd/2]``, with Llama-3 scaling when configured."""
    hd = cfg.hd
    # float32 throughout, exactly like the reference implementation
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "llama3":
        factor = float(rs["factor"])
        lo, hi = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_ctx = float(rs["original_max_position_embeddings"])
        lo_wavelen, hi_wavelen = old_ctx / lo, old_ctx / hi
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > lo_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= hi_wavelen) & (wavelen <= lo_wavelen)
        inv = torch.where(is_mid, mid, scaled)
    elif kind == "linear":
        inv = inv / float(rs["factor"])
    elif kind not in (None, "default"):
        raise ValueError(f"unsupported rope scaling {kind!r}")
    return inv.to(torch.float32)


@dataclass(slots=True)
class KVCache:
    """Per-layer key/value tensors, ``[slots, n_kv, max_len, hd]`` each.

    Slot ``s`` holds the cache of whichever sequence the KV manager gave slot ``s``;
    position ``p`` of that sequence lives at ``[s, :, p]``. On the CPU the tensors are
    allocated with ``torch.empty`` and the OS only backs the pages a sequence touches.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def allocate(
        cls, cfg: LlamaConfig, slots: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> KVCache:
        shape = (slots, cfg.num_key_value_heads, max_len, cfg.hd)
        n = cfg.num_hidden_layers
        return cls(
            k=[torch.empty(shape, dtype=dtype, device=device) for _ in range(n)],
            v=[torch.empty(shape, dtype=dtype, device=device) for _ in range(n)],
        )


@dataclass(frozen=True, slots=True)
class PrefillSegment:
    """Rows ``[row0, row1)`` of the flat batch are positions ``start..`` of ``slot``."""

    row0: int
    row1: int
    slot: int
    start: int
    mask: torch.Tensor  # [g*T, start+T] additive float mask (0 / -inf)


@dataclass(slots=True)
class AttentionPlan:
    """Where each flat row goes in the cache and which attention call reads it.

    Built once per step by the runner and shared by every layer.
    """

    write_slots: torch.Tensor  # [N] long: cache slot of each row
    write_pos: torch.Tensor  # [N] long: position of each row
    cos: torch.Tensor  # [N, 1, hd]
    sin: torch.Tensor  # [N, 1, hd]
    decodes: list[tuple[int, int, int]] = field(default_factory=list)  # (row, slot, len)
    decode_rows: torch.Tensor | None = None  # [Bd] long: the rows of ``decodes``
    prefills: list[PrefillSegment] = field(default_factory=list)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, D]; statistics in fp32 like the reference implementation
        dt = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dt)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.h, self.kvh, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hd
        self.g = self.h // self.kvh
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.h * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.kvh * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.kvh * self.hd, bias=False)
        self.o_proj = nn.Linear(self.h * self.hd, d, bias=False)

    def forward(
        self, x: torch.Tensor, plan: AttentionPlan, kc: torch.Tensor, vc: torch.Tensor
    ) -> torch.Tensor:
        n = x.shape[0]
        h, kvh, g, hd = self.h, self.kvh, self.g, self.hd
        q = self.q_proj(x).view(n, h, hd)  # [N, H, hd]
        k = self.k_proj(x).view(n, kvh, hd)  # [N, KVH, hd]
        v = self.v_proj(x).view(n, kvh, hd)
        q = q * plan.cos + _rotate_half(q) * plan.sin
        k = k * plan.cos + _rotate_half(k) * plan.sin
        # write every new row into its slot/position: kc[slot, :, pos] = k[row]
        kc[plan.write_slots, :, plan.write_pos] = k.to(kc.dtype)
        vc[plan.write_slots, :, plan.write_pos] = v.to(vc.dtype)
        if not plan.prefills:  # a pure decode step: rows are the decodes, in order
            out = self._decode(q, plan, kc, vc).to(x.dtype)  # [N, H*hd]
            return self.o_proj(out)
        out = torch.empty(n, h * hd, dtype=x.dtype, device=x.device)  # [N, H*hd]
        if plan.decodes:
            out[plan.decode_rows] = self._decode(q, plan, kc, vc).to(x.dtype)

        for seg in plan.prefills:
            t = seg.row1 - seg.row0
            end = seg.start + t
            qp = q[seg.row0 : seg.row1].view(t, kvh, g, hd).permute(1, 0, 2, 3)
            qp = qp.reshape(1, kvh, t * g, hd).to(kc.dtype)  # [1, KVH, T*g, hd]
            o = F.scaled_dot_product_attention(
                qp,
                kc[seg.slot : seg.slot + 1, :, :end],
                vc[seg.slot : seg.slot + 1, :, :end],
                attn_mask=seg.mask,
            )  # [1, KVH, T*g, hd]
            o = o.view(kvh, t, g, hd).permute(1, 0, 2, 3).reshape(t, h * hd)
            out[seg.row0 : seg.row1] = o.to(x.dtype)
        return self.o_proj(out)

    def _decode(
        self, q: torch.Tensor, plan: AttentionPlan, kc: torch.Tensor, vc: torch.Tensor
    ) -> torch.Tensor:
        """Attention of every decode row over its own cache prefix -> ``[Bd, H*hd]``."""
        qv = q.view(q.shape[0], self.kvh, self.g, self.hd).to(kc.dtype)  # [N, KVH, g, hd]
        sdpa = F.scaled_dot_product_attention
        outs = [  # [1, KVH, g, hd] each: the new token sees every cached position, no mask
            sdpa(qv[r : r + 1], kc[s : s + 1, :, :ln], vc[s : s + 1, :, :ln])
            for r, s, ln in plan.decodes
        ]
        return torch.cat(outs).view(len(outs), self.h * self.hd)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, D] -> [N, F] -> [N, D]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, plan: AttentionPlan, kc: torch.Tensor, vc: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), plan, kc, vc)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaModel(nn.Module):
    """``model.*`` + ``lm_head`` with Hugging Face parameter names."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[N, 1, hd]`` for integer positions ``[N]`` (computed in fp32)."""
        inv: torch.Tensor = self.inv_freq  # type: ignore[assignment]
        freqs = positions.to(torch.float32)[:, None] * inv[None, :]  # [N, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [N, 1, hd]
        dt = self.lm_head.weight.dtype
        return emb.cos().to(dt), emb.sin().to(dt)

    def forward(self, input_ids: torch.Tensor, plan: AttentionPlan, cache: KVCache) -> torch.Tensor:
        """Hidden states ``[N, D]`` after the final norm, for flat ``input_ids`` ``[N]``."""
        x = self.model.embed_tokens(input_ids)  # [N, D]
        for i, layer in enumerate(self.model.layers):
            x = layer(x, plan, cache.k[i], cache.v[i])
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw fp32 logits ``[R, V]`` for hidden rows ``[R, D]``."""
        return self.lm_head(hidden).float()
