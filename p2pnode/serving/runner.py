"""Model runner: the only serving code (besides the model) that touches torch.

It turns the scheduler's :class:`~p2pnode.serving.scheduler.ScheduledChunk` list into
one flat forward pass, then samples. Per step it builds, once, the
:class:`~p2pnode.serving.model.AttentionPlan` shared by every layer (cache write
positions, rotary tables, masks), runs the model, computes logits only for the rows
that sample, and:

* takes the **raw** ``log_softmax`` of those logits for the reported logprobs;
* samples each row with its own ``torch.Generator`` (seeded per request, so the
  tokens do not depend on what else is in the batch); greedy rows share one argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from p2pnode.serving.device import DevicePlan
from p2pnode.serving.loader import LoadedModel
from p2pnode.serving.model import AttentionPlan, KVCache, LlamaModel, PrefillSegment
from p2pnode.serving.scheduler import ScheduledChunk

__all__ = ["ModelRunner", "SampleOut", "SamplingSpec"]

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SamplingSpec:
    """How to choose the next token of one sequence."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    top_logprobs: int = 0
    generator: torch.Generator | None = None

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
        self.cache = KVCache.allocate(self.cfg, plan.slots, plan.max_len, plan.dtype, plan.device)
        self.group = self.cfg.num_attention_heads // self.cfg.num_key_value_heads
        # The cache is allocated uninitialised (and, on the CPU, backed lazily): every
        # attention call reads only positions this sequence has written, so stale or
        # garbage memory beyond a sequence's length is never touched.
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
            if t == 1 and c.start > 0:
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
        if decodes and prefills:
            plan.decode_rows = torch.tensor([d[0] for d in decodes], dtype=torch.long, device=dev)
        return torch.tensor(ids, dtype=torch.long, device=dev), plan, last_rows

    # ------------------------------------------------------------------ steps
    @torch.inference_mode()
    def execute(
        self, chunks: Sequence[ScheduledChunk], specs: dict[str, SamplingSpec]
    ) -> dict[str, SampleOut]:
        """Run one step; return the sampled token of every chunk with ``sample``."""
        input_ids, plan, last_rows = self._build_plan(chunks)
        hidden = self._forward(input_ids, plan, self.cache)  # [N, D]
        sampling = [c for c in chunks if c.sample]
        if not sampling:
            return {}
        logits = self.model.logits(hidden[torch.tensor(last_rows, device=self.device)])  # [R, V]
        return dict(
            zip(
                (c.seq_id for c in sampling),
                self._sample(logits, [specs[c.seq_id] for c in sampling]),
                strict=True,
            )
        )

    def _sample(self, logits: torch.Tensor, specs: Sequence[SamplingSpec]) -> list[SampleOut]:
        # Raw model logprobs without materialising log_softmax over the vocabulary:
        # logp = logits - logsumexp(logits), so the chosen token's logprob and the
        # top-k alternatives (top-k of logits = top-k of logp) need only the [R] lse.
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [R, 1] fp32
        tokens = logits.argmax(dim=-1)  # greedy for every row, replaced below if sampling
        for r, spec in enumerate(specs):
            if not spec.greedy:
                tokens[r] = self._sample_row(logits[r], spec)
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
            out.append(SampleOut(int(tok), float(lp), top))
        return out

    @staticmethod
    def _sample_row(row: torch.Tensor, spec: SamplingSpec) -> torch.Tensor:
        x = row / spec.temperature  # [V]
        if spec.top_k > 0 and spec.top_k < x.shape[0]:
            kth = torch.topk(x, spec.top_k).values[-1]
            x = x.masked_fill(x < kth, _NEG_INF)
        if spec.top_p < 1.0:
            sorted_x, order = torch.sort(x, descending=True)
            probs = torch.softmax(sorted_x, dim=-1)
            drop = probs.cumsum(-1) - probs > spec.top_p  # keep the smallest head with mass >= p
            x = x.scatter(0, order, sorted_x.masked_fill(drop, _NEG_INF))
        probs = torch.softmax(x, dim=-1)
        return torch.multinomial(probs, 1, generator=spec.generator)[0]

    @torch.inference_mode()
    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """Raw logprob of each completion token given everything before it (one pass)."""
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
        logp = torch.log_softmax(self.model.logits(hidden[p - 1 : t - 1]), dim=-1)  # [C, V]
        target = torch.tensor(completion_ids, device=self.device)[:, None]
        return [float(x) for x in logp.gather(1, target)[:, 0].tolist()]
