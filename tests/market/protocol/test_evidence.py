"""Evidence records (issue 16, item 2): compact, and checkable by anyone."""

from __future__ import annotations

import dataclasses
import os

import pytest

from market.protocol.codec import encode
from market.protocol.commitment import chain_genesis, chain_link
from market.protocol.envelope import seal
from market.protocol.errors import RemoteProtocolError
from market.protocol.evidence import Evidence, check_record
from market.protocol.messages import Bid, EndOfStream, Prompt, SamplingParams, TokenChunk
from market.protocol.signing import SigningKey

JOB = bytes(range(16))
PROVIDER = SigningKey.generate(os.urandom)
OTHER = SigningKey.generate(os.urandom)
IDS = (5, 17, 4096, 9, 9, 31000, 2)
LPS = (-0.125, -1.5, -0.0009765625, -3.25, -0.5, -7.0, -0.25)
SIZES = (4, 3)


def _head(offset: int = 0) -> bytes:
    h = chain_genesis(JOB, offset)
    at = 0
    for seq, n in enumerate(SIZES):
        h = chain_link(h, seq, IDS[at : at + n], LPS[at : at + n])
        at += n
    return h


def record(key: SigningKey = PROVIDER, *, end: bool = True, now_ms: int = 1_000) -> Evidence:
    prompt = Prompt(job_id=JOB, prompt="Count:", params=SamplingParams(temperature=0.7, seed=12345))
    msg = (
        EndOfStream(job_id=JOB, total_tokens=7, finish_reason="length", result_commitment=_head())
        if end
        else TokenChunk(
            job_id=JOB, seq=1, token_ids=IDS[4:], logprobs=LPS[4:], text="", chain_hash=_head()
        )
    )
    signed = seal(msg, key=key, now_ms=now_ms, rng=os.urandom)
    bid = Bid(
        job_id=JOB,
        provider=PROVIDER.peer_id,
        provider_address=b"\x01" * 20,
        price_per_1k=10,
        est_ttft_ms=100,
        est_tokens_per_s=20.0,
        chunk_tokens=4,
        credit_chunks=1,
        dtype="float32",
    )
    return Evidence(
        job_id=JOB,
        provider=PROVIDER.peer_id,
        model_id="ab" * 32,
        prompt=encode(prompt),
        resume_offset=0,
        chunk_sizes=SIZES,
        token_ids=IDS,
        logprobs=LPS,
        signed=signed,
        bid=seal(bid, key=PROVIDER, now_ms=now_ms, rng=os.urandom),
    )


def test_an_honest_record_checks_out_long_after_its_envelope_expired() -> None:
    ev = record(now_ms=1_000)  # expired decades ago by today's clock
    assert check_record(ev) == []
    assert check_record(record(end=False)) == []  # a cut segment: its last chunk
    assert ev.prompt_message().params.seed == 12345
    assert ev.claimed_dtype() == "float32"


def test_the_record_round_trips_and_names_itself_by_hash() -> None:
    ev = record()
    back = Evidence.decode(ev.encode())
    assert back == ev and back.digest() == ev.digest()
    # 8 bytes per token, 2 per chunk, then ids and framing once per record
    fixed = ev.size() - len(ev.prompt) - len(ev.signed) - len(ev.bid)
    fixed -= 8 * len(IDS) + 2 * len(SIZES)
    assert 0 < fixed < 160, fixed
    with pytest.raises(RemoteProtocolError, match="not an evidence record"):
        Evidence.decode(b"\x93\x01\x02\x03")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda ev: dataclasses.replace(ev, token_ids=(6, *IDS[1:])), "do not hash"),
        (lambda ev: dataclasses.replace(ev, logprobs=(-0.1, *LPS[1:])), "do not hash"),
        (lambda ev: dataclasses.replace(ev, chunk_sizes=(3, 4)), "do not hash"),
        (lambda ev: dataclasses.replace(ev, resume_offset=2), "do not hash"),
        (lambda ev: dataclasses.replace(ev, provider=OTHER.peer_id), "not " + OTHER.peer_id),
        (lambda ev: dataclasses.replace(ev, signed=record(OTHER).signed), "sealed by"),
        (lambda ev: dataclasses.replace(ev, signed=ev.signed[:-3] + b"xyz"), "does not verify"),
        (lambda ev: dataclasses.replace(ev, bid=record(OTHER).signed), "not this provider's Bid"),
        (
            lambda ev: dataclasses.replace(ev, prompt=encode(Prompt(job_id=bytes(16), prompt="x"))),
            "not this job's Prompt",
        ),
    ],
)
def test_a_record_that_was_tampered_with_is_refused(change: object, why: str) -> None:
    ev = change(record())  # type: ignore[operator]
    problems = check_record(ev)
    assert problems and any(why in p for p in problems), problems
