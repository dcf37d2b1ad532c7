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

* decode rows (one new token each) attend over their own cache prefix
  ``cache[slot, :, :len]``. On the CPU one call per layer does every row
  (``AttentionPlan.decode_attention``, the kernel of :mod:`~p2pnode.serving.cpu_attention`).
  Elsewhere, and where that kernel cannot be built, the rows go to torch's attention in
  :class:`DecodeGroup` s the runner chooses: a row alone reads exactly its own prefix
  with no mask; a group of rows in neighbouring slots reads
  ``cache[s0:s0+n, :, :longest]`` in one call with a padding mask. One call per row
  (32 per layer) was mostly per-call overhead; one padded call for all rows reads every
  slot up to the *longest* sequence. The runner weighs the two (cache positions read
  against calls made);
* each prefill chunk attends in its own call with a causal mask offset by the tokens
  already cached for that sequence (chunked prefill).

GQA trick: the ``g = n_heads / n_kv_heads`` query heads that share a KV head are
folded into the query-length axis (``[B, n_kv, g*T, hd]``), so keys and values are
never repeated in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionPlan",
    "DecodeGroup",
    "KVCache",
    "LlamaConfig",
    "LlamaModel",
    "PrefillSegment",
]


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


@dataclass(frozen=True, slots=True)
class DecodeGroup:
    """Decode rows that attend in one call over ``cache[slot0 : slot0 + n, :, :length]``.

    ``first .. first + len(slots)`` are the group's entries in ``AttentionPlan.decodes``
    (the runner orders them so); ``slots`` holds each row's slot minus ``slot0``. A
    single row reads exactly its own prefix (``mask`` None). Otherwise every slot in
    the range gets a query row: rows shorter than ``length`` are masked past their end
    (the runner makes sure those positions hold finite numbers), and slots in the range
    that decode nothing this step get a dummy row whose output is dropped.
    """

    first: int
    slot0: int
    n: int
    length: int
    slots: tuple[int, ...]
    at: torch.Tensor | None = None  # [R] long: ``slots`` as a tensor (None: 0..n-1)
    mask: torch.Tensor | None = None  # [n, 1, 1, length] additive float mask (0 / -inf)


@dataclass(slots=True)
class AttentionPlan:
    """Where each flat row goes in the cache and which attention call reads it.

    Built once per step by the runner and shared by every layer. The decode rows are
    rows ``0 .. len(decodes)`` of the flat batch, in ``decodes`` order.
    """

    write_slots: torch.Tensor  # [N] long: cache slot of each row
    write_pos: torch.Tensor  # [N] long: position of each row
    cos: torch.Tensor  # [N, 1, hd]
    sin: torch.Tensor  # [N, 1, hd]
    decodes: list[tuple[int, int, int]] = field(default_factory=list)  # (row, slot, len)
    decode_groups: list[DecodeGroup] = field(default_factory=list)  # cover ``decodes``
    prefills: list[PrefillSegment] = field(default_factory=list)
    # Instead of decode_groups: (q [Bd, KVH, g, hd], kc, vc) -> fp32 [Bd, KVH, g, hd]
    decode_attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = (
        None
    )


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
        self.qkv_proj: nn.Module | None = None  # q|k|v in one matmul, after fuse()

    def fuse(self) -> None:
        """Replace q/k/v projections by one ``[D, (H + 2 KVH) * hd]`` matmul."""
        if self.qkv_proj is not None:
            return
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        fused = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        fused.weight = nn.Parameter(w, requires_grad=False)
        self.qkv_proj = fused
        del self.q_proj, self.k_proj, self.v_proj

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``qk`` ``[N, H + KVH, hd]`` (queries then keys, side by side) and ``v``."""
        n = x.shape[0]
        if self.qkv_proj is None:
            qk = torch.cat([self.q_proj(x), self.k_proj(x)], dim=-1)
            return qk.view(n, self.h + self.kvh, self.hd), self.v_proj(x).view(n, self.kvh, self.hd)
        qkv = self.qkv_proj(x).view(n, self.h + 2 * self.kvh, self.hd)
        return qkv[:, : self.h + self.kvh], qkv[:, self.h + self.kvh :]

    def forward(
        self, x: torch.Tensor, plan: AttentionPlan, kc: torch.Tensor, vc: torch.Tensor
    ) -> torch.Tensor:
        n = x.shape[0]
        h, kvh, g, hd = self.h, self.kvh, self.g, self.hd
        qk, v = self._qkv(x)  # [N, H + KVH, hd], [N, KVH, hd]
        # rotary on queries and keys at once: x*cos + rotate_half(x)*sin, where
        # rotate_half(x) = (-x2, x1) = roll(x) * (-1, 1), the sign being in plan.sin
        qk = qk * plan.cos + qk.roll(hd // 2, dims=-1) * plan.sin
        q, k = qk[:, :h], qk[:, h:]  # [N, H, hd], [N, KVH, hd]
        # write every new row into its slot/position: kc[slot, :, pos] = k[row]
        kc[plan.write_slots, :, plan.write_pos] = k.to(kc.dtype)
        vc[plan.write_slots, :, plan.write_pos] = v.to(vc.dtype)
        nd = len(plan.decodes)  # decode rows come first in the flat batch
        if not plan.prefills:  # a pure decode step
            return self.o_proj(self._decode(q, plan, kc, vc).to(x.dtype))  # [N, D]
        out = torch.empty(n, h * hd, dtype=x.dtype, device=x.device)  # [N, H*hd]
        if nd:
            out[:nd] = self._decode(q[:nd], plan, kc, vc).to(x.dtype)

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
        if plan.decode_attention is not None:  # one call for every row
            qk = q.view(q.shape[0], self.kvh, self.g, self.hd)  # [Bd, KVH, g, hd]
            return plan.decode_attention(qk, kc, vc).view(q.shape[0], self.h * self.hd)
        qv = q.view(q.shape[0], self.kvh, self.g, self.hd).to(kc.dtype)  # [Bd, KVH, g, hd]
        sdpa = F.scaled_dot_product_attention
        out = torch.empty_like(qv)  # [Bd, KVH, g, hd]
        for grp in plan.decode_groups:
            a, s0, n, ln = grp.first, grp.slot0, grp.n, grp.length
            if grp.mask is None:  # one row: its exact prefix, no mask
                out[a] = sdpa(qv[a : a + 1], kc[s0 : s0 + 1, :, :ln], vc[s0 : s0 + 1, :, :ln])[0]
                continue
            r = len(grp.slots)
            if grp.at is None:  # the rows are exactly slots s0 .. s0+n-1, in order
                qg = qv[a : a + r]
            else:  # [n, KVH, g, hd]: dummy queries where a slot decodes nothing
                qg = qv.new_zeros(n, self.kvh, self.g, self.hd)
                qg[grp.at] = qv[a : a + r]
            o = sdpa(qg, kc[s0 : s0 + n, :, :ln], vc[s0 : s0 + n, :, :ln], attn_mask=grp.mask)
            out[a : a + r] = o if grp.at is None else o[grp.at]
        return out.view(out.shape[0], self.h * self.hd)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.gate_up_proj: nn.Module | None = None  # gate|up in one matmul, after fuse()

    def fuse(self) -> None:
        """Replace gate/up projections by one ``[D, 2F]`` matmul."""
        if self.gate_up_proj is not None:
            return
        w = torch.cat([self.gate_proj.weight, self.up_proj.weight])
        fused = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        fused.weight = nn.Parameter(w, requires_grad=False)
        self.gate_up_proj = fused
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, D] -> [N, F] -> [N, D]
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # [N, F] each
        return self.down_proj(F.silu(gate) * up)


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

    def fuse_projections(self, then: Callable[[nn.Module], object] | None = None) -> None:
        """Fuse q/k/v and gate/up into single matmuls (after the weights are loaded).

        Fewer, wider matrix products: fewer kernel launches on CUDA, better use of the
        cores on the CPU. The Hugging Face parameter names exist only before this.
        ``then(layer)`` runs after each layer is fused (the runner packs it there, so
        only one layer's fused copies exist at a time).
        """
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
            if then is not None:
                then(layer)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[N, 1, hd]`` for integer positions ``[N]`` (computed in fp32).

        The first half of ``sin`` is negated, so that a rotation is
        ``x * cos + x.roll(hd // 2, -1) * sin``: the same products as the reference's
        ``x * cos + rotate_half(x) * sin`` (negating is exact), in fewer kernels.
        """
        inv: torch.Tensor = self.inv_freq  # type: ignore[assignment]
        freqs = positions.to(torch.float32)[:, None] * inv[None, :]  # [N, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [N, 1, hd]
        dt = self.model.embed_tokens.weight.dtype
        sin = emb.sin()
        sin[..., : inv.shape[0]].neg_()
        return emb.cos().to(dt), sin.to(dt)

    def forward(self, input_ids: torch.Tensor, plan: AttentionPlan, cache: KVCache) -> torch.Tensor:
        """Hidden states ``[N, D]`` after the final norm, for flat ``input_ids`` ``[N]``."""
        x = self.model.embed_tokens(input_ids)  # [N, D]
        for i, layer in enumerate(self.model.layers):
            x = layer(x, plan, cache.k[i], cache.v[i])
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Raw fp32 logits ``[R, V]`` for hidden rows ``[R, D]``."""
        return self.lm_head(hidden).float()
