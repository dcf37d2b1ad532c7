"""Evidence of what a provider delivered: a compact record anyone can check.

A buyer keeps, per provider segment of a job, what that provider signed: its bid
(its terms, and the precision it said it computes in), the prompt it was sent (the wire :class:`~market.protocol.messages.Prompt`, sampling
parameters and seed included), the tokens and the fp32 logprobs it streamed, how they
were chunked, and one envelope it sealed that carries the head of its result chain
(its :class:`~market.protocol.messages.EndOfStream`, or its last
:class:`~market.protocol.messages.TokenChunk` when the segment was cut). Because the
chain (:mod:`market.protocol.commitment`) links every chunk's token ids and logprobs,
that one signature binds the provider to all of them: :func:`check_record` recomputes
the chain from the record and compares it with the signed head, so a third party
needs only the record and nothing from the buyer's word.

Size: 8 bytes per token (u32 id, f32 logprob), 2 per chunk, plus the prompt and two
envelopes (about 250 bytes each) per segment (:meth:`Evidence.size`).

Pure: no I/O, no clock; the ledger stores :meth:`Evidence.encode`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import msgpack

from market.protocol.codec import decode
from market.protocol.commitment import chain_genesis, chain_link
from market.protocol.envelope import unseal_record
from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.messages import Bid, EndOfStream, Prompt, TokenChunk

__all__ = ["Evidence", "check_record"]

_VERSION = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """One provider's segment of one job, as the buyer received and must be able to prove."""

    job_id: bytes
    provider: str  # the peer id that sealed ``signed``
    model_id: str  # the content address the job asked for
    prompt: bytes  # the encoded wire Prompt sent to this provider
    resume_offset: int  # tokens earlier providers delivered before this segment
    chunk_sizes: tuple[int, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    signed: bytes  # the provider's sealed EndOfStream, or its last TokenChunk
    bid: bytes  # the provider's sealed Bid for the job (its stated dtype among its terms)

    def __post_init__(self) -> None:
        if len(self.job_id) != 16:
            raise LocalProtocolError("Evidence.job_id must be 16 bytes")
        if len(self.token_ids) != len(self.logprobs):
            raise LocalProtocolError("Evidence: as many logprobs as token ids")
        if sum(self.chunk_sizes) != len(self.token_ids) or any(n < 1 for n in self.chunk_sizes):
            raise LocalProtocolError("Evidence.chunk_sizes must split the tokens")

    def encode(self) -> bytes:
        """Canonical bytes (msgpack; ids as big-endian u32, logprobs as f32)."""
        n = len(self.token_ids)
        body = [
            _VERSION,
            self.job_id,
            self.provider,
            self.model_id,
            self.prompt,
            self.resume_offset,
            struct.pack(f">{len(self.chunk_sizes)}H", *self.chunk_sizes),
            struct.pack(f">{n}I", *self.token_ids),
            struct.pack(f">{n}f", *self.logprobs),
            self.signed,
            self.bid,
        ]
        out = msgpack.packb(body, use_bin_type=True)
        assert isinstance(out, bytes)
        return out

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        """Read :meth:`encode`'s bytes; :class:`RemoteProtocolError` if they are not a record."""
        try:
            body = msgpack.unpackb(data, raw=False)
            version, job_id, provider, model_id, prompt, offset, sizes, ids, lps, signed, bid = body
            if version != _VERSION:
                raise ValueError(f"evidence version {version}")
            return cls(
                job_id=job_id,
                provider=provider,
                model_id=model_id,
                prompt=prompt,
                resume_offset=offset,
                chunk_sizes=struct.unpack(f">{len(sizes) // 2}H", sizes),
                token_ids=struct.unpack(f">{len(ids) // 4}I", ids),
                logprobs=struct.unpack(f">{len(lps) // 4}f", lps),
                signed=signed,
                bid=bid,
            )
        except (ValueError, TypeError, struct.error, LocalProtocolError) as e:
            raise RemoteProtocolError(f"not an evidence record: {e}") from None

    def digest(self) -> bytes:
        """sha256 of the record: how a fraud report names it."""
        return hashlib.sha256(self.encode()).digest()

    def prompt_message(self) -> Prompt:
        """The prompt this provider was sent (parameters and seed included)."""
        message = decode(self.prompt)
        if not isinstance(message, Prompt) or message.job_id != self.job_id:
            raise RemoteProtocolError("evidence prompt is not this job's Prompt")
        return message

    def claimed_dtype(self) -> str:
        """The precision the provider's signed bid stated ("" if it stated none)."""
        message = unseal_record(self.bid).message
        return message.dtype if isinstance(message, Bid) else ""

    def size(self) -> int:
        """Bytes of the encoded record."""
        return len(self.encode())


def check_record(ev: Evidence) -> list[str]:
    """What is wrong with ``ev`` as a signed record (empty: chain and signature hold).

    The envelope must verify and be sealed by ``ev.provider``; it must carry this job's
    chunk or end of stream; the chain recomputed from the record's chunks must reach
    the head it states (and an end of stream must count the record's tokens).
    """
    problems: list[str] = []
    try:
        opened = unseal_record(ev.signed)
    except RemoteProtocolError as e:
        return [f"signed envelope does not verify: {e.reason}"]
    if opened.sender != ev.provider:
        problems.append(f"envelope sealed by {opened.sender}, not {ev.provider}")
    message = opened.message
    if isinstance(message, EndOfStream):
        head, count = message.result_commitment, message.total_tokens
    elif isinstance(message, TokenChunk):
        head, count = message.chain_hash, None
    else:
        return [*problems, f"signed message is a {type(message).__name__}, not a chunk or end"]
    if message.job_id != ev.job_id:
        problems.append("signed message is for another job")
    try:
        ev.prompt_message()
    except RemoteProtocolError as e:
        problems.append(e.reason)
    try:
        bid = unseal_record(ev.bid)
        if bid.sender != ev.provider or not isinstance(bid.message, Bid):
            problems.append("the bid is not this provider's Bid")
        elif bid.message.job_id != ev.job_id:
            problems.append("the bid is for another job")
    except RemoteProtocolError as e:
        problems.append(f"signed bid does not verify: {e.reason}")
    h = chain_genesis(ev.job_id, ev.resume_offset)
    at = 0
    for seq, n in enumerate(ev.chunk_sizes):
        h = chain_link(h, seq, ev.token_ids[at : at + n], ev.logprobs[at : at + n])
        at += n
    if h != head:
        problems.append("the tokens and logprobs do not hash to the signed chain head")
    if count is not None and count != len(ev.token_ids):
        problems.append(f"end of stream says {count} tokens, the record holds {len(ev.token_ids)}")
    return problems
