"""``hearth bench verify`` and ``hearth verify calibrate``: the verification rule, measured.

Both run the same set of jobs (chat prompts of varied length, 16-128 output tokens,
half greedy, half seeded sampling with assorted temperature / top-p / top-k) through
*providers* and re-score every claim on one *verifier*: an fp32 engine on the CPU with
the bundled SmolLM2, running :meth:`~p2pnode.serving.engine.Engine.rescore`.

Honest providers (each its own engine): fp32; bf16; another torch thread count; a
different batch mix (a small ``max_batch`` and filler requests interleaved); decode
attention through torch instead of the C kernel.

Cheating providers, built here and only here (never a flag of the product), all
advertising the original content address:

* ``int8`` / ``int4``: the same weights quantised and dequantised (per output channel
  symmetric int8; groups of 32 symmetric int4);
* ``model swap``: every weight matrix perturbed by Gaussian noise of 5 % of its std;
* ``cheap-then-prove``: a half-depth model (every other layer dropped) chooses the
  tokens, the real model fills in their logprobs;
* ``token tampered``: one honest token replaced by a random one, logprobs refilled by
  the real model; ``fabricated logprobs``: honest tokens, made-up logprobs;
  ``seed ignored``: seeded jobs sampled with another seed; ``truncated+padded``:
  the first half of an honest output, then its last token repeated, logprobs refilled.

Calibration runs the honest providers on another set of jobs and writes, per
dtype class, the largest difference seen of each kind times a safety factor
(:func:`market.protocol.verify.tolerate`); the benchmark judges with those files.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import msgpack
import torch
import trio

from market.protocol import verify as V
from p2pnode.serving import Engine, GenerationChunk, GenerationRequest, LoadedModel

__all__ = [
    "DEFAULT_TOLERANCES",
    "calibrate",
    "evidence_bytes_per_token",
    "load_tolerances",
    "make_jobs",
    "run_bench_verify",
]

DEFAULT_TOLERANCES = "tolerances.json"  # beside market/protocol/verify.py
ADMITTED_DTYPE = "bfloat16"  # honest providers may run bf16 (the GPU default)
_FLOORS = dict(  # the least each bound may be (fp32 against fp32 is ~1e-5)
    logprob=1e-3,
    logprob_mean=1e-4,
    greedy_gap=1e-3,
    tie_margin=1e-3,
    boundary_k=1e-3,
    boundary_p=1e-4,
    near_tie_rate=0.0,
)

TOPICS = (
    "the history of lighthouses",
    "how bread rises",
    "a cat who learns to sail",
    "why the sky is blue",
    "a recipe for tomato soup",
    "the rules of chess",
    "a letter to a future self",
    "how solar panels work",
    "a dragon afraid of heights",
    "the water cycle",
    "a day at a busy train station",
    "how to plant a tree",
)
CONTEXT = (
    "Keep it simple and concrete. Use short sentences. Imagine the reader is curious "
    "but has never heard of the subject before, and finish with one surprising fact. "
)


def make_jobs(n: int, seed: int) -> list[GenerationRequest]:
    """``n`` jobs: varied prompts (about 20-300 tokens), 16-128 output tokens each,
    even ones greedy, odd ones seeded sampling."""
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        prompt = f"Write about {rng.choice(TOPICS)}. " + CONTEXT * rng.choice((0, 1, 3, 6))
        sampled = i % 2 == 1
        jobs.append(
            GenerationRequest(
                messages=[{"role": "user", "content": prompt}],
                max_tokens=rng.randint(16, 128),
                temperature=rng.choice((0.7, 0.9, 1.0)) if sampled else 0.0,
                top_p=rng.choice((1.0, 0.9, 0.95)) if sampled else 1.0,
                top_k=rng.choice((0, 0, 50)) if sampled else 0,
                seed=rng.getrandbits(63) if sampled else None,
                logprobs=True,
                ignore_eos=True,
            )
        )
    return jobs


# ------------------------------------------------------------------ cheating models
def _matrices(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if v.dim() == 2}


def quantised(loaded: LoadedModel, bits: int, group: int | None) -> LoadedModel:
    """Every weight matrix quantised symmetric to ``bits`` and back (per output row, or
    per ``group`` columns); the content address still claims the original."""
    qmax = 2 ** (bits - 1) - 1
    state = dict(loaded.state_dict)
    for k, w in _matrices(state).items():
        rows = w.reshape(w.shape[0], -1, group) if group else w[:, None, :]
        scale = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
        q = (rows / scale).round().clamp(-qmax - 1, qmax) * scale
        state[k] = q.reshape(w.shape).contiguous()
    return dataclasses.replace(loaded, state_dict=state)


def perturbed(loaded: LoadedModel, rel: float = 0.05, seed: int = 0) -> LoadedModel:
    """Another model of the same shape: every matrix plus noise of ``rel`` of its std."""
    gen = torch.Generator().manual_seed(seed)
    state = dict(loaded.state_dict)
    for k, w in _matrices(state).items():
        state[k] = w + torch.randn(w.shape, generator=gen) * (rel * float(w.std()))
    return dataclasses.replace(loaded, state_dict=state)


def half_depth(loaded: LoadedModel) -> LoadedModel:
    """A cheaper model: every other decoder layer dropped."""
    n = loaded.config.num_hidden_layers
    keep = list(range(0, n, 2))
    state = {}
    for k, v in loaded.state_dict.items():
        if k.startswith("model.layers."):
            i = int(k.split(".")[2])
            if i in keep:
                state[k.replace(f"model.layers.{i}.", f"model.layers.{keep.index(i)}.", 1)] = v
        else:
            state[k] = v
    config = dataclasses.replace(loaded.config, num_hidden_layers=len(keep))
    return dataclasses.replace(loaded, state_dict=state, config=config)


# ------------------------------------------------------------------ running jobs
@dataclasses.dataclass(frozen=True, slots=True)
class Setup:
    """One provider's engine: dtype, threads, batch, attention path, filler traffic."""

    name: str
    dtype: torch.dtype = torch.float32
    threads: int = 2
    max_batch: int = 16
    attention_kernel: bool = True
    fillers: int = 0


HONEST = (
    Setup("honest fp32"),
    Setup("honest bf16", dtype=torch.bfloat16),
    Setup("honest 1 thread", threads=1),
    Setup("honest batch mix", max_batch=3, fillers=8),
    Setup("honest torch attention", attention_kernel=False),
)


def _engine(loaded: LoadedModel, s: Setup) -> Engine:
    return Engine(
        loaded,
        device="cpu",
        dtype=s.dtype,
        num_threads=s.threads,
        max_batch=s.max_batch,
        max_model_len=768,
        attention_kernel=s.attention_kernel,
    )


async def generate(
    loaded: LoadedModel, jobs: Sequence[GenerationRequest], s: Setup
) -> tuple[list[GenerationChunk], float]:
    """Every job on one engine, all at once (the engine batches them); seconds taken."""
    out: list[GenerationChunk | None] = [None] * len(jobs)
    async with _engine(loaded, s) as engine:

        async def one(i: int) -> None:
            out[i] = await engine.complete(jobs[i])

        async def filler(i: int) -> None:
            await trio.sleep(0.05 * i)
            req = GenerationRequest(
                prompt=f"Filler {i}: " + CONTEXT * (i % 4), max_tokens=24, temperature=1.0
            )
            await engine.complete(req)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(len(jobs)):
                nursery.start_soon(one, i)
            for i in range(s.fillers):
                nursery.start_soon(filler, i)
        seconds = time.perf_counter() - started
    return [o for o in out if o is not None], seconds


def claim_of(
    model_id: str, req: GenerationRequest, ids: Sequence[int], lps: Sequence[float]
) -> V.Claim:
    params = V.Params(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, seed=req.seed)
    return V.Claim(model_id=model_id, params=params, token_ids=tuple(ids), logprobs=tuple(lps))


def _claims(
    model_id: str, jobs: Sequence[GenerationRequest], outs: Sequence[GenerationChunk]
) -> list[V.Claim]:
    return [
        claim_of(model_id, j, o.token_ids, [lp.logprob for lp in o.logprobs])
        for j, o in zip(jobs, outs, strict=True)
    ]


async def rescore_all(
    verifier: Engine, jobs: Sequence[GenerationRequest], claims: Sequence[V.Claim]
) -> tuple[list[V.Rescore], float]:
    """The verifier's pass over each claim (one at a time); seconds taken."""
    out = []
    started = time.perf_counter()
    for j, c in zip(jobs, claims, strict=True):
        p = c.params
        r = await verifier.rescore(
            j, c.token_ids, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=p.seed
        )
        out.append(V.Rescore(**dataclasses.asdict(r)))
    return out, time.perf_counter() - started


# ------------------------------------------------------------------ calibration
def measured(claims: Sequence[V.Claim], rescores: Sequence[V.Rescore]) -> dict[str, float]:
    """The largest honest difference of each kind the rule bounds (see Tolerances)."""
    worst = dict.fromkeys(_FLOORS, 0.0)
    for c, r in zip(claims, rescores, strict=True):
        diffs = [abs(a - b) for a, b in zip(c.logprobs, r.logprobs, strict=True)]
        worst["logprob"] = max(worst["logprob"], *diffs)
        worst["logprob_mean"] = max(worst["logprob_mean"], sum(diffs) / len(diffs))
        ties = 0
        for i, tok in enumerate(c.token_ids):
            if c.params.greedy:
                worst["greedy_gap"] = max(worst["greedy_gap"], r.margin[i])
                ties += tok != r.choice[i]
            elif tok != r.choice[i]:
                ties += 1
                worst["tie_margin"] = max(worst["tie_margin"], r.margin[i])
                worst["boundary_k"] = max(worst["boundary_k"], r.outside_k[i])
                worst["boundary_p"] = max(worst["boundary_p"], r.outside_p[i])
        worst["near_tie_rate"] = max(worst["near_tie_rate"], ties / len(c.token_ids))
    return worst


async def _calibrate(
    loaded: LoadedModel, jobs: int, seed: int, safety: float, log: Callable[[str], None]
) -> V.ToleranceTable:
    reqs = make_jobs(jobs, seed)
    per_setup: dict[str, dict[str, float]] = {}
    async with _engine(loaded, Setup("verifier")) as verifier:
        for s in HONEST:
            outs, secs = await generate(loaded, reqs, s)
            claims = _claims(loaded.model_id, reqs, outs)
            rescores, _ = await rescore_all(verifier, reqs, claims)
            per_setup[s.name] = measured(claims, rescores)
            log(f"{s.name}: {secs:.1f} s; {per_setup[s.name]}")
    entries = []
    for dtype, names in (
        ("float32", [s.name for s in HONEST if s.dtype == torch.float32]),
        ("bfloat16", [s.name for s in HONEST]),
    ):
        bounds = {
            k: V.tolerate([per_setup[n][k] for n in names], safety, floor)
            for k, floor in _FLOORS.items()
        }
        entries.append(V.Tolerances(model_id=loaded.model_id, dtype=dtype, **bounds))
    provenance = {
        "command": f"hearth verify calibrate --jobs {jobs} --seed {seed} --safety {safety}",
        "model": loaded.name,
        "verifier": "fp32, CPU, 2 threads",
        "setups": {s.name: dataclasses.asdict(s) | {"dtype": str(s.dtype)} for s in HONEST},
        "measured": per_setup,
        "safety": safety,
        "floors": _FLOORS,
        "torch": torch.__version__,
    }
    return V.ToleranceTable(entries=tuple(entries), provenance=provenance)


def calibrate(
    *, jobs: int = 24, seed: int = 16, safety: float = 2.0, log: Callable[[str], None] = print
) -> V.ToleranceTable:
    """Measure honest variation on the bundled model; the tolerances with ``safety``."""
    from p2pnode.serving import load_model

    loaded = load_model()
    return trio.run(_calibrate, loaded, jobs, seed, safety, log)


def load_tolerances(path: str | None = None) -> V.ToleranceTable:
    """A tolerances file, or the one shipped beside the rule."""
    if path is None:
        text = resources.files("market.protocol").joinpath(DEFAULT_TOLERANCES).read_text()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return V.ToleranceTable.from_json(text)


# ------------------------------------------------------------------ evidence size
def evidence_bytes_per_token(claims: Sequence[V.Claim], chunk_tokens: int = 16) -> float:
    """msgpack bytes per token of what a buyer keeps to prove a job to a third party.

    Per job: the prompt's hash (32 B), the sampling parameters with the seed, the token
    ids (4 B each) and fp32 logprobs (4 B each, packed); per chunk of ``chunk_tokens``
    (the market's default): the chain hash (32 B), the envelope's Ed25519 signature
    (64 B), message id (16 B) and two timestamps. (The chunk's text, also under the
    signature, is re-derived from the token ids by the detokeniser.)
    """
    total = tokens = 0
    for c in claims:
        n = len(c.token_ids)
        chunks = [
            {"h": bytes(32), "sig": bytes(64), "id": bytes(16), "t": [2**41, 2**41 + 30_000]}
            for _ in range(math.ceil(n / chunk_tokens))
        ]
        record = {
            "prompt": bytes(32),
            "params": dataclasses.asdict(c.params),
            "ids": b"".join(t.to_bytes(4, "little") for t in c.token_ids),
            "lps": torch.tensor(c.logprobs, dtype=torch.float32).numpy().tobytes(),
            "chunks": chunks,
        }
        total += len(msgpack.packb(record))
        tokens += n
    return total / max(1, tokens)


# ------------------------------------------------------------------ the benchmark
async def _refill(
    verifier: Engine, jobs: Sequence[GenerationRequest], ids: Sequence[Sequence[int]]
) -> list[V.Claim]:
    """Claims whose logprobs the real model filled in (what a cheater can always do)."""
    out = []
    for j, t in zip(jobs, ids, strict=True):
        r = await verifier.rescore(j, t, top_n=0)
        out.append(claim_of(verifier.model_id, j, t, r.logprobs))
    return out


async def _bench(
    loaded: LoadedModel, jobs: int, seed: int, table: V.ToleranceTable, log: Callable[[str], None]
) -> dict[str, Any]:
    tol = table.get(loaded.model_id, ADMITTED_DTYPE)
    if tol is None:
        raise RuntimeError(f"no {ADMITTED_DTYPE} tolerances for {loaded.model_id}")
    reqs = make_jobs(jobs, seed)
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    evidence: float | None = None

    async with _engine(loaded, Setup("verifier")) as verifier:

        async def judge_row(
            name: str, honest: bool, js: Sequence[GenerationRequest], claims: Sequence[V.Claim]
        ) -> list[V.Rescore]:
            rescores, secs = await rescore_all(verifier, js, claims)
            verdicts = [V.judge(c, r, tol) for c, r in zip(claims, rescores, strict=True)]
            flagged = sum(not v.ok for v in verdicts)
            reasons: dict[str, int] = {}
            for v in verdicts:
                if not v.ok:
                    key = v.reason if v.reason != "token" else v.failed[0].reason
                    reasons[key] = reasons.get(key, 0) + 1
            rate = flagged / len(js) if js else 0.0
            rows.append(
                dict(
                    variant=name,
                    honest=honest,
                    jobs=len(js),
                    flagged=flagged,
                    rate=rate,
                    reasons=reasons,
                )
            )
            log(f"{name}: {flagged}/{len(js)} flagged {reasons} (rescored in {secs:.1f} s)")
            timing[name] = secs
            return rescores

        honest_outs: list[GenerationChunk] = []
        for s in HONEST:
            outs, secs = await generate(loaded, reqs, s)
            claims = _claims(loaded.model_id, reqs, outs)
            await judge_row(s.name, True, reqs, claims)
            if s.name == "honest fp32":
                honest_outs = outs
                timing["generate"] = secs
                timing["verify"] = timing[s.name]
                evidence = evidence_bytes_per_token(claims)
        fp32 = Setup("cheater")
        for name, sub in (
            ("int8 substitute", lambda: quantised(loaded, 8, None)),
            ("int4 substitute", lambda: quantised(loaded, 4, 32)),
            ("model swap (perturbed weights)", lambda: perturbed(loaded)),
        ):
            outs, _ = await generate(sub(), reqs, fp32)
            await judge_row(name, False, reqs, _claims(loaded.model_id, reqs, outs))
        cheap, _ = await generate(half_depth(loaded), reqs, fp32)
        claims = await _refill(verifier, reqs, [o.token_ids for o in cheap])
        await judge_row("cheap-then-prove (half depth)", False, reqs, claims)
        tampered = []
        for o in honest_outs:
            t = list(o.token_ids)
            t[rng.randrange(len(t))] = rng.randrange(loaded.config.vocab_size)
            tampered.append(t)
        await judge_row("one token changed", False, reqs, await _refill(verifier, reqs, tampered))
        fabricated = [
            claim_of(
                loaded.model_id,
                j,
                o.token_ids,
                [math.log(rng.uniform(0.05, 1.0)) for _ in o.token_ids],
            )
            for j, o in zip(reqs, honest_outs, strict=True)
        ]
        await judge_row("fabricated logprobs", False, reqs, fabricated)
        seeded = [j for j in reqs if j.seed is not None]
        other = [dataclasses.replace(j, seed=(j.seed or 0) + 1) for j in seeded]
        outs, _ = await generate(loaded, other, fp32)
        claims = [
            claim_of(loaded.model_id, j, o.token_ids, [lp.logprob for lp in o.logprobs])
            for j, o in zip(seeded, outs, strict=True)
        ]
        await judge_row("seed ignored", False, seeded, claims)
        padded = []
        for o in honest_outs:
            t = list(o.token_ids)
            half = max(1, len(t) // 2)
            padded.append(t[:half] + [t[half - 1]] * (len(t) - half))
        await judge_row("truncated then padded", False, reqs, await _refill(verifier, reqs, padded))

    return {
        "model": loaded.name,
        "model_id": loaded.model_id,
        "tolerances": dataclasses.asdict(tol),
        "jobs_per_row": jobs,
        "output_tokens": sum(len(o.token_ids) for o in honest_outs),
        "rows": rows,
        "verify_cost_ratio": timing["verify"] / timing["generate"],
        "generate_s": timing["generate"],
        "verify_s": timing["verify"],
        "evidence_bytes_per_token": evidence,
        "cheater_jobs_served": None,  # needs the market: measured by the market's test
        "torch_threads": torch.get_num_threads(),
    }


def run_bench_verify(
    *,
    jobs: int = 24,
    seed: int = 1616,
    tolerances: str | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """The detection matrix (see the module docstring); one dict of figures."""
    from p2pnode.serving import load_model

    loaded = load_model()
    table = load_tolerances(tolerances)
    return trio.run(_bench, loaded, jobs, seed, table, log)
