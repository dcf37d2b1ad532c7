"""Model runner: the only serving code (besides the model) that touches torch.

It turns the scheduler's :class:`~p2pnode.serving.scheduler.ScheduledChunk` list into
one flat forward pass, then samples. Per step it builds, once, the
:class:`~p2pnode.serving.model.AttentionPlan` shared by every layer (cache write
positions, rotary tables, masks), runs the model, computes logits only for the rows
that sample, and:

* takes the **raw** ``log_softmax`` of those logits for the reported logprobs (only
  when some sequence in the step asked for logprobs);
* chooses each row's token with :func:`~p2pnode.serving.sampler.choose`: a pure
  function of (raw logits, sampling parameters, seed, position), so the tokens do not
  depend on what else is in the batch or on the device, and a verifier recomputes
  them (:meth:`ModelRunner.rescore`); greedy rows share one argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from p2pnode.serving import cpu_attention, onednn, sampler
from p2pnode.serving.device import DevicePlan
from p2pnode.serving.loader import LoadedModel
from p2pnode.serving.model import (
    AttentionPlan,
    DecodeGroup,
    KVCache,
    LlamaModel,
    PrefillSegment,
)
from p2pnode.serving.scheduler import ScheduledChunk

__all__ = ["ModelRunner", "SampleOut", "SamplingSpec"]

_NEG_INF = float("-inf")
_NAN = float("nan")
# Decode attention grouping (see _decode_groups): the overhead of one attention call,
# in cache positions read (measured ~20-40 us per call on a 2-core CPU, where one
# position of SmolLM2's K+V, 1.5 KB, reads in ~0.2 us), and the most rows in one call.
_CALL_COST = 256
_MAX_GROUP = 64
_ZERO_AHEAD = 32  # positions zeroed at once when a padded call needs finite memory


def _is_decode(c: ScheduledChunk) -> bool:
    return len(c.token_ids) == 1 and c.start > 0


def _order(chunks: Sequence[ScheduledChunk]) -> list[ScheduledChunk]:
    """Decodes first, by slot (so neighbouring slots can share a call), then prefills."""
    return sorted(chunks, key=lambda c: (not _is_decode(c), c.slot))


@dataclass(slots=True)
class SamplingSpec:
    """How to choose the next token of one sequence."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    top_logprobs: int = 0
    seed: int = 0  # the job's sampling seed (unused when greedy)
    origin: int = 0  # sequence length at completion position 0 (the caller's prompt)
    logprobs: bool = True  # report the chosen token's logprob (else SampleOut.logprob is nan)

    def row(self, length: int) -> sampler.RowParams:
        """The sampler's parameters for the token after ``length`` tokens of context."""
        return sampler.RowParams(
            self.temperature, self.top_k, self.top_p, self.seed, length - self.origin
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True, slots=True)
class SampleOut:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class ModelRunner:
    """Holds the weights and the KV cache on one device; executes engine steps."""

    def __init__(self, loaded: LoadedModel, plan: DevicePlan, *, compile: bool = False) -> None:
        self.plan = plan
        self.cfg = loaded.config
        self.device = plan.device
        self.model: LlamaModel = loaded.build(plan.device, plan.dtype)
        # Fused q|k|v and gate|up are new tensors: on the CPU only worth their memory
        # when packed (the loaded weights are memory-mapped and shared otherwise).
        pack = plan.packed_linears and not compile
        if pack or plan.device.type != "cpu":
            self.model.fuse_projections(then=onednn.pack_linears if pack else None)
        if pack:
            onednn.pack_linears(self.model)  # what is left: the lm_head
        self.cache = KVCache.allocate(self.cfg, plan.slots, plan.max_len, plan.dtype, plan.device)
        self.group = self.cfg.num_attention_heads // self.cfg.num_key_value_heads
        # CPU: every decode row's attention in one kernel call per layer (None: torch's)
        self.decode_kernel = (
            cpu_attention.load(self.cfg.hd, self.group) if plan.attention_kernel else None
        )
        self._finite = [0] * plan.slots  # per slot: positions [0, n) hold finite numbers
        # The cache is allocated uninitialised (and, on the CPU, backed lazily): a
        # sequence's own attention reads only positions it has written, except a padded
        # decode call, which first zeroes what it may read beyond (_make_finite).
        self._forward = self.model.forward
        if compile:
            # Compile the hot step only; shapes vary with the batch, hence dynamic.
            self._forward = torch.compile(self.model.forward, dynamic=True)

    # ------------------------------------------------------------------ plan
    def _causal_mask(self, start: int, t: int) -> torch.Tensor:
        # [g*T, start+T]: query row t sees keys 0..start+t
        keys = torch.arange(start + t, device=self.device)
        qpos = torch.arange(start, start + t, device=self.device)
        m = torch.zeros(t, start + t, dtype=self.plan.dtype, device=self.device)
        m.masked_fill_(keys[None, :] > qpos[:, None], _NEG_INF)
        return m.repeat_interleave(self.group, dim=0)

    def _build_plan(
        self, chunks: Sequence[ScheduledChunk]
    ) -> tuple[torch.Tensor, AttentionPlan, list[int]]:
        """Flatten ``chunks`` (decodes first, by slot: see :func:`_order`) into one batch."""
        ids: list[int] = []
        slots: list[int] = []
        pos: list[int] = []
        decodes: list[tuple[int, int, int]] = []
        prefills: list[PrefillSegment] = []
        last_rows: list[int] = []
        for c in chunks:
            row0, t = len(ids), len(c.token_ids)
            ids.extend(c.token_ids)
            if t == 1:
                slots.append(c.slot)
                pos.append(c.start)
            else:
                slots.extend([c.slot] * t)
                pos.extend(range(c.start, c.start + t))
            if _is_decode(c):
                decodes.append((row0, c.slot, c.start + 1))
            else:
                prefills.append(
                    PrefillSegment(row0, row0 + t, c.slot, c.start, self._causal_mask(c.start, t))
                )
            if c.sample:
                last_rows.append(row0 + t - 1)
        dev = self.device
        pos_t = torch.tensor(pos, dtype=torch.long, device=dev)
        cos, sin = self.model.rope(pos_t)
        plan = AttentionPlan(
            write_slots=torch.tensor(slots, dtype=torch.long, device=dev),
            write_pos=pos_t,
            cos=cos,
            sin=sin,
            decodes=decodes,
            prefills=prefills,
        )
        if decodes and self.decode_kernel is not None:
            plan.decode_attention = self.decode_kernel.bind(
                [s for _r, s, _ln in decodes], [ln for _r, _s, ln in decodes]
            )
        else:
            plan.decode_groups = self._decode_groups(decodes)
        return torch.tensor(ids, dtype=torch.long, device=dev), plan, last_rows

    def _decode_groups(self, decodes: Sequence[tuple[int, int, int]]) -> list[DecodeGroup]:
        """Cut the decode rows (sorted by slot) into attention calls of least cost.

        A call over rows ``i..j`` reads ``(slot_j - slot_i + 1) * longest`` cache
        positions and costs ``_CALL_COST`` positions' worth of overhead; a dynamic
        programme over the cut points minimises the sum (groups span at most
        ``_MAX_GROUP`` rows, to bound the programme's work).
        """
        n = len(decodes)
        best = [0] * (n + 1)
        cut = [0] * (n + 1)
        for j in range(1, n + 1):
            longest, best[j], cut[j] = 0, -1, j - 1
            last_slot = decodes[j - 1][1]
            for i in range(j, max(0, j - _MAX_GROUP), -1):
                longest = max(longest, decodes[i - 1][2])
                cost = best[i - 1] + (last_slot - decodes[i - 1][1] + 1) * longest + _CALL_COST
                if best[j] < 0 or cost < best[j]:
                    best[j], cut[j] = cost, i - 1
        bounds = []
        j = n
        while j > 0:
            bounds.append((cut[j], j))
            j = cut[j]
        return [self._group(decodes, i, j) for i, j in reversed(bounds)]

    def _group(self, decodes: Sequence[tuple[int, int, int]], i: int, j: int) -> DecodeGroup:
        rows = decodes[i:j]
        slot0 = rows[0][1]
        span = rows[-1][1] - slot0 + 1
        longest = max(ln for _r, _s, ln in rows)
        offs = tuple(s - slot0 for _r, s, _ln in rows)
        if len(rows) == 1:
            return DecodeGroup(i, slot0, 1, longest, offs)
        dev = self.device
        lens = [0] * span
        for (_r, _s, ln), o in zip(rows, offs, strict=True):
            lens[o] = ln
            self._make_finite(slot0 + o, ln, longest)
        # [n, 1, 1, L] additive: a row sees its own prefix; a dummy row (length 0) sees
        # position 0 (its output is dropped; a fully masked row would only make NaN)
        lim = torch.tensor([max(ln, 1) for ln in lens], device=dev)
        past = torch.arange(longest, device=dev)[None, :] >= lim[:, None]  # [n, L]
        mask = torch.zeros(span, longest, dtype=self.plan.dtype, device=dev)
        mask = mask.masked_fill_(past, _NEG_INF)[:, None, None, :]
        at = None if len(rows) == span else torch.tensor(offs, dtype=torch.long, device=dev)
        return DecodeGroup(i, slot0, span, longest, offs, at, mask)

    def _make_finite(self, slot: int, length: int, upto: int) -> None:
        """Zero ``[length, upto)`` of ``slot`` in every layer where it may be garbage.

        A padded attention call masks those positions, but ``0 * NaN`` is still NaN:
        memory from ``torch.empty`` must hold finite numbers before it is read. Stale
        keys/values of an earlier sequence in the slot are finite, so each position is
        zeroed at most once (rounded up to whole blocks of ``_ZERO_AHEAD``).
        """
        start = max(self._finite[slot], length)
        if start >= upto:
            return
        end = min(self.plan.max_len, -(-upto // _ZERO_AHEAD) * _ZERO_AHEAD)
        for kc, vc in zip(self.cache.k, self.cache.v, strict=True):
            kc[slot, :, start:end].zero_()
            vc[slot, :, start:end].zero_()
        self._finite[slot] = end

    # ------------------------------------------------------------------ steps
    @torch.inference_mode()
    def execute(
        self, chunks: Sequence[ScheduledChunk], specs: dict[str, SamplingSpec]
    ) -> dict[str, SampleOut]:
        """Run one step; return the sampled token of every chunk with ``sample``."""
        chunks = _order(chunks)
        input_ids, plan, last_rows = self._build_plan(chunks)
        hidden = self._forward(input_ids, plan, self.cache)  # [N, D]
        for c in chunks:  # what this step wrote is finite from now on
            end = c.start + len(c.token_ids)
            self._finite[c.slot] = max(self._finite[c.slot], end)
        sampling = [c for c in chunks if c.sample]
        if not sampling:
            return {}
        logits = self.model.logits(hidden[torch.tensor(last_rows, device=self.device)])  # [R, V]
        specs_r = [specs[c.seq_id] for c in sampling]
        rows = [s.row(c.start + len(c.token_ids)) for s, c in zip(specs_r, sampling, strict=True)]
        return dict(
            zip((c.seq_id for c in sampling), self._sample(logits, specs_r, rows), strict=True)
        )

    def _sample(
        self,
        logits: torch.Tensor,
        specs: Sequence[SamplingSpec],
        rows: Sequence[sampler.RowParams],
    ) -> list[SampleOut]:
        tokens = sampler.choose(logits, rows)  # [R]
        if not any(s.logprobs for s in specs):  # nobody asked: skip the [R, V] reduction
            return [SampleOut(int(t), _NAN, ()) for t in tokens.tolist()]
        # Raw model logprobs without materialising log_softmax over the vocabulary:
        # logp = logits - logsumexp(logits), so the chosen token's logprob and the
        # top-k alternatives (top-k of logits = top-k of logp) need only the [R] lse.
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [R, 1] fp32
        chosen = (logits.gather(1, tokens[:, None]) - lse)[:, 0]
        k = max(s.top_logprobs for s in specs)
        top_v: list[list[float]] = []
        top_i: list[list[int]] = []
        if k:
            tv, ti = logits.topk(k, dim=-1)
            top_v, top_i = (tv - lse).tolist(), ti.tolist()
        out = []
        for r, (tok, lp) in enumerate(zip(tokens.tolist(), chosen.tolist(), strict=True)):
            n = specs[r].top_logprobs
            top = tuple(zip(top_i[r][:n], top_v[r][:n], strict=True)) if n else ()
            out.append(SampleOut(int(tok), float(lp) if specs[r].logprobs else _NAN, top))
        return out

    def _forced_logits(
        self, prompt_ids: Sequence[int], completion_ids: Sequence[int]
    ) -> torch.Tensor:
        """Raw fp32 logits ``[C, V]`` predicting each completion token (one pass)."""
        ids = [*prompt_ids, *completion_ids]
        t = len(ids)
        if not prompt_ids or not completion_ids:
            raise ValueError("score needs a non-empty prompt and completion")
        scratch = KVCache.allocate(self.cfg, 1, t, self.plan.dtype, self.device)
        pos_t = torch.arange(t, device=self.device)
        cos, sin = self.model.rope(pos_t)
        plan = AttentionPlan(
            write_slots=torch.zeros(t, dtype=torch.long, device=self.device),
            write_pos=pos_t,
            cos=cos,
            sin=sin,
            prefills=[PrefillSegment(0, t, 0, 0, self._causal_mask(0, t))],
        )
        hidden = self.model(torch.tensor(ids, device=self.device), plan, scratch)
        p = len(prompt_ids)
        return self.model.logits(hidden[p - 1 : t - 1])

    @torch.inference_mode()
    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """Raw logprob of each completion token given everything before it (one pass)."""
        logp = torch.log_softmax(self._forced_logits(prompt_ids, completion_ids), dim=-1)
        target = torch.tensor(completion_ids, device=self.device)[:, None]
        return [float(x) for x in logp.gather(1, target)[:, 0].tolist()]

    @torch.inference_mode()
    def rescore(
        self,
        prompt_ids: Sequence[int],
        completion_ids: Sequence[int],
        rows: Sequence[sampler.RowParams],
        top_n: int,
    ) -> dict[str, list[Any]]:
        """What a verifier reports of a completion, from one teacher-forced pass.

        Per completion position: the raw logprob of the given token, the top ``top_n``
        (ids, raw logprobs), and :func:`~p2pnode.serving.sampler.explain`'s choice,
        margin and distances outside top-k / top-p under ``rows`` (one per position).
        """
        logits = self._forced_logits(prompt_ids, completion_ids)  # [C, V]
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        target = torch.tensor(completion_ids, device=self.device)[:, None]
        claimed = (logits.gather(1, target) - lse)[:, 0]
        tv, ti = logits.topk(max(1, top_n), dim=-1)
        ex = sampler.explain(logits, rows, completion_ids)
        return {
            "logprobs": [float(x) for x in claimed.tolist()],
            "top_ids": [tuple(r[:top_n]) for r in ti.tolist()],
            "top_logprobs": [tuple(r[:top_n]) for r in (tv - lse).tolist()],
            "choice": ex.choice,
            "margin": ex.margin,
            "outside_k": ex.outside_k,
            "outside_p": ex.outside_p,
        }
