"""The result commitment: a SHA-256 hash chain over streamed token chunks.

A provider commits, chunk by chunk, to exactly what it generated — the token ids
*and* their log-probabilities — so a verifier can later re-run the model on the
same prompt and check the work (greedy fp32 decoding reproduces logprobs to about
2.5e-5, but the commitment binds the exact fp32 values the provider sent).

Byte-level definition (version 1; all integers big-endian, unsigned)::

    genesis(job_id, resume_offset) =
        SHA256( b"hearth/result-chain/v1\\x00" || job_id (16 bytes) || u32(resume_offset) )

    link(prev, seq, token_ids, logprobs) =
        SHA256( prev (32 bytes)
             || u32(seq)
             || u32(n)                              # n = len(token_ids) = len(logprobs)
             || u32(token_ids[0]) || ... || u32(token_ids[n-1])
             || f32(logprobs[0])  || ... || f32(logprobs[n-1]) )

where ``f32(x)`` is the IEEE-754 binary32 encoding of ``x`` (``struct.pack(">f", x)``,
round-to-nearest-even from the Python float). The serving engine produces fp32
logprobs, so a value that came from the engine round-trips exactly through the
float64 carried on the wire.

Each provider's segment of a job has its own chain: ``seq`` restarts at 0 and the
genesis includes ``resume_offset`` (the number of tokens earlier providers
delivered before a failover), so the buyer can check — and later prove — which
provider produced which tokens. ``TokenChunk.chain_hash`` is the chain value after
that chunk; ``EndOfStream.result_commitment`` is the last chunk's ``chain_hash``,
or the genesis hash when the provider streamed no chunk.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from market.protocol.errors import LocalProtocolError

__all__ = ["CHAIN_DOMAIN", "ChainVerifier", "chain_genesis", "chain_link"]

#: Domain separator of the version-1 result chain.
CHAIN_DOMAIN = b"hearth/result-chain/v1\x00"

_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")


def chain_genesis(job_id: bytes, resume_offset: int = 0) -> bytes:
    """The chain's starting value for one provider's segment of ``job_id``."""
    if len(job_id) != 16:
        raise LocalProtocolError(f"job_id must be 16 bytes, got {len(job_id)}")
    if not 0 <= resume_offset < 2**32:
        raise LocalProtocolError(f"resume_offset out of range: {resume_offset}")
    return hashlib.sha256(CHAIN_DOMAIN + job_id + _U32.pack(resume_offset)).digest()


def chain_link(prev: bytes, seq: int, token_ids: Sequence[int], logprobs: Sequence[float]) -> bytes:
    """The chain value after chunk ``seq`` (see the module docstring for the bytes)."""
    n = len(token_ids)
    if len(prev) != 32:
        raise LocalProtocolError("previous chain hash must be 32 bytes")
    if len(logprobs) != n:
        raise LocalProtocolError(f"{n} token ids but {len(logprobs)} logprobs")
    try:
        body = struct.pack(f">{n}I{n}f", *token_ids, *logprobs)
        head = _U32x2.pack(seq, n)
    except (struct.error, OverflowError) as e:
        raise LocalProtocolError(f"chunk not encodable: {e}") from None
    return hashlib.sha256(prev + head + body).digest()


class ChainVerifier:
    """Recomputes a provider's chain as its chunks arrive (the buyer's side).

    >>> v = ChainVerifier(bytes(16))
    >>> h = chain_link(v.head, 0, (5, 6), (-0.5, -1.25))
    >>> v.feed(0, (5, 6), (-0.5, -1.25), h)
    True
    """

    __slots__ = ("head", "next_seq")

    def __init__(self, job_id: bytes, resume_offset: int = 0) -> None:
        self.head = chain_genesis(job_id, resume_offset)
        self.next_seq = 0

    def feed(
        self, seq: int, token_ids: Sequence[int], logprobs: Sequence[float], claimed: bytes
    ) -> bool:
        """Advance over one chunk; ``False`` (state unchanged) if seq or hash is wrong."""
        if seq != self.next_seq:
            return False
        try:
            h = chain_link(self.head, seq, token_ids, logprobs)
        except LocalProtocolError:
            return False
        if h != claimed:
            return False
        self.head = h
        self.next_seq += 1
        return True
