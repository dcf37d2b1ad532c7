"""Fuzzing the decoder: only ``RemoteProtocolError`` may come out of it.

Two parts:

* a bulk loop of seeded, hypothesis-free cases — random bytes, mutated valid message
  frames, mutated envelopes, and validly re-signed envelopes around mutated payloads —
  ``HEARTH_FUZZ_CASES`` of them (default 120,000), with the count and rate printed;
* hypothesis tests (random bytes; mutations of hypothesis-generated messages) that
  shrink any failure to a minimal example.

Any other exception fails the test and prints the seed, case number and input hex
that reproduce it. For longer runs use ``tests/fuzz/fuzz_wire.py`` (atheris).
"""

from __future__ import annotations

import os
import random
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.protocol import (
    Message,
    RemoteProtocolError,
    ReplayGuard,
    SigningKey,
    decode,
    encode,
    seal,
    unseal,
)
from tests.market.protocol.wire_corpus import mutate, random_message, resealed_mutation
from tests.market.protocol.wire_strategies import any_message

SEED = int(os.environ.get("HEARTH_FUZZ_SEED", "20261123"))
CASES = int(os.environ.get("HEARTH_FUZZ_CASES", "120000"))
NOW = 1_700_000_000_000


def _accepts_only_remote_errors(fn: object, data: bytes, where: str) -> bool:
    """Run ``fn(data)``; True if it decoded, False on RemoteProtocolError, raise otherwise."""
    try:
        fn(data)  # type: ignore[operator]
    except RemoteProtocolError:
        return False
    except BaseException as e:
        raise AssertionError(
            f"{type(e).__name__}: {e!r:.300} escaped the decoder at {where}; "
            f"input hex: {data.hex()[:4000]}"
        ) from e
    return True


def test_bulk_fuzz_decoder_and_envelope() -> None:
    rng = random.Random(SEED)
    key = SigningKey.generate(rng.randbytes)
    guard = ReplayGuard(max_entries=5_000)
    corpus_msgs = [random_message(rng) for _ in range(400)]
    frames = [encode(m) for m in corpus_msgs]
    envelopes = [
        seal(m, key=key, now_ms=NOW, rng=rng.randbytes, ttl_ms=600_000) for m in corpus_msgs
    ]

    def open_env(data: bytes) -> object:
        return unseal(data, now_ms=NOW + 1, replay_guard=guard)

    counts = {"random": 0, "message": 0, "envelope": 0, "resealed": 0}
    accepted = 0
    start = time.perf_counter()
    for case in range(CASES):
        where = f"seed={SEED} case={case}"
        kind = case % 10
        if kind == 0:
            data = rng.randbytes(rng.choice([0, 1, 2, 5, 16, 64, 300]))
            accepted += _accepts_only_remote_errors(decode, data, where)
            accepted += _accepts_only_remote_errors(open_env, data, where)
            counts["random"] += 1
        elif kind <= 6:
            i = rng.randrange(len(frames))
            data = mutate(frames[i], rng, rng.choice(frames))
            accepted += _accepts_only_remote_errors(decode, data, where)
            counts["message"] += 1
        elif kind <= 8:
            data = mutate(rng.choice(envelopes), rng, rng.choice(envelopes))
            accepted += _accepts_only_remote_errors(open_env, data, where)
            counts["envelope"] += 1
        else:
            msg = rng.choice(corpus_msgs)
            data = resealed_mutation(msg, key, NOW, rng, rng.choice(frames))
            accepted += _accepts_only_remote_errors(open_env, data, where)
            counts["resealed"] += 1
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    print(
        f"\nwire fuzz: {total} cases in {elapsed:.1f} s ({total / elapsed:,.0f}/s), "
        f"seed {SEED}, {accepted} decoded as valid, by kind {counts}"
    )
    assert total == CASES
    # The corpus still decodes (the mutations did not mutate it in place).
    assert [decode(f) for f in frames] == corpus_msgs


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=256))
def test_random_bytes_hypothesis(data: bytes) -> None:
    _accepts_only_remote_errors(decode, data, "hypothesis random bytes")
    _accepts_only_remote_errors(lambda d: unseal(d, now_ms=NOW), data, "hypothesis random bytes")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=any_message(), seed=st.integers(0, 2**32), donor=any_message())
def test_mutated_messages_hypothesis(msg: Message, seed: int, donor: Message) -> None:
    rng = random.Random(seed)
    frame = mutate(encode(msg), rng, encode(donor))
    _accepts_only_remote_errors(decode, frame, f"hypothesis mutation seed={seed}")
