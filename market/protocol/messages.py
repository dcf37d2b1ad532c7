"""Every message the Hearth market exchanges, as self-validating dataclasses.

Each message is ``@dataclass(frozen=True, slots=True, kw_only=True)``, derives from
:class:`Message`, and is registered with a short type tag and a version by
:func:`register` — the codec writes both into every frame, so a later issue can add
``register("offer", 2)`` beside version 1. Field rules live in the annotations
(see :mod:`market.protocol.schema`); building an invalid message raises
:class:`~market.protocol.errors.LocalProtocolError` at once::

    Heartbeat(job_id=bytes(16), seq=3)   # fine
    Heartbeat(job_id=b"short", seq=3)    # LocalProtocolError: Heartbeat.job_id: ...

Conventions: ``job_id`` is 16 bytes; peer ids are libp2p base58 strings
("12D3Koo…" for ed25519 keys); Ethereum addresses are 20 raw bytes; amounts and
prices are ints in the payment token's base units, ``0 <= x < 2**256`` (sent as
32-byte big-endian bytes); ``price_per_1k`` is per 1,000 tokens, so *n* tokens cost
``n * price_per_1k // 1000`` (see :func:`cost_of`). Prompts never travel on gossip:
an :class:`Rfq` names the model and sizes only; the :class:`Prompt` goes on the
direct stream after the :class:`Award`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, TypeVar

from market.protocol.errors import LocalProtocolError
from market.protocol.schema import WIDE, Pattern, Range, Size, WireStruct, schema_of

__all__ = [
    "MESSAGE_TYPES",
    "Accept",
    "Amount",
    "Award",
    "Bid",
    "Cancel",
    "ChatMessage",
    "Decline",
    "DeclineReason",
    "EndOfStream",
    "Error",
    "ErrorCode",
    "EthAddress",
    "EvidenceRecord",
    "EvidenceRequest",
    "FinishReason",
    "FraudReport",
    "GpuInfo",
    "Hash32",
    "Heartbeat",
    "JobId",
    "Message",
    "ModelId",
    "ModelOffer",
    "Offer",
    "PeerIdStr",
    "PowerState",
    "Prompt",
    "Rfq",
    "SamplingParams",
    "ScoreRequest",
    "ScoreResult",
    "TokenChunk",
    "Voucher",
    "cost_of",
    "register",
]

# ------------------------------------------------------------------ field types

#: 16 random bytes naming one job end to end (RFQ → settlement).
JobId = Annotated[bytes, Size(16, 16)]
#: A libp2p peer id in base58btc ("12D3KooW…" for ed25519 keys).
PeerIdStr = Annotated[str, Size(1, 128), Pattern(r"[1-9A-HJ-NP-Za-km-z]+")]
#: A raw 20-byte Ethereum address.
EthAddress = Annotated[bytes, Size(20, 20)]
#: A 32-byte hash (commitments).
Hash32 = Annotated[bytes, Size(32, 32)]
#: Token base units, 0 ≤ x < 2**256; encoded as 32 bytes big-endian.
Amount = Annotated[int, Range(0, 2**256 - 1), WIDE]
#: A model's content address: lowercase hex sha256 of its weights file.
ModelId = Annotated[str, Size(64, 64), Pattern(r"[0-9a-f]{64}")]
#: Unsigned 32-bit counter (sequence numbers, token counts, milliseconds).
U32 = Annotated[int, Range(0, 2**32 - 1)]
#: Unsigned 64-bit integer.
U64 = Annotated[int, Range(0, 2**64 - 1)]
#: A vocabulary index.
TokenId = Annotated[int, Range(0, 2**31 - 1)]
#: Maximum tokens one job may generate.
MaxTokens = Annotated[int, Range(1, 1_000_000)]
#: Tokens per streamed chunk.
ChunkTokens = Annotated[int, Range(1, 1024)]
#: Chunks a provider streams ahead of payment (1 = risk bounded to one chunk).
CreditChunks = Annotated[int, Range(1, 1024)]
#: A region label ("" = any / unspecified), e.g. "us-west".
Region = Annotated[str, Size(0, 32)]
#: Short free text (reasons, details).
Text200 = Annotated[str, Size(0, 200)]
#: Large text (prompts, message contents); the frame limit bounds it further.
LongText = Annotated[str, Size(0, 1_000_000)]
#: Log-probabilities (finite; ≤ 0 up to rounding).
LogProb = Annotated[float, Range(-1e9, 1e-3)]

PowerState = Literal["normal", "throttled", "draining", "off"]
FinishReason = Literal["stop", "length", "cancelled"]


class DeclineReason(enum.StrEnum):
    """Why a provider declined an RFQ."""

    MODEL_NOT_HELD = "model_not_held"
    PRICE_BELOW_FLOOR = "price_below_floor"
    BUSY = "busy"
    POWER_SHED = "power_shed"
    REGION = "region"
    OTHER = "other"


class ErrorCode(enum.StrEnum):
    """Machine-readable cause carried by an :class:`Error` message."""

    BAD_REQUEST = "bad_request"
    MODEL_UNAVAILABLE = "model_unavailable"
    OVERLOADED = "overloaded"
    PAYMENT_BEHIND = "payment_behind"
    INTERNAL = "internal"
    POWER_SHED = "power_shed"


def cost_of(tokens: int, price_per_1k: int) -> int:
    """What ``tokens`` tokens cost at ``price_per_1k`` (floor division, base units)."""
    return tokens * price_per_1k // 1000


# -------------------------------------------------------------------- registry


class Message(WireStruct):
    """Base of every top-level message. ``TAG``/``VERSION`` are set by :func:`register`."""

    __slots__ = ()
    TAG: ClassVar[str]
    VERSION: ClassVar[int]


M = TypeVar("M", bound=type[Message])

#: (tag, version) → message class, filled by :func:`register`.
MESSAGE_TYPES: dict[tuple[str, int], type[Message]] = {}


def register(tag: str, version: int = 1) -> Callable[[M], M]:
    """Class decorator: register a message type under ``tag`` and ``version``.

    Compiles the class's schema at once, so a badly annotated field fails at import.
    """
    if not (1 <= len(tag) <= 16 and tag.isascii() and tag.isidentifier()):
        raise LocalProtocolError(f"bad message tag {tag!r}")
    if not 1 <= version <= 255:
        raise LocalProtocolError(f"bad message version {version!r}")

    def deco(cls: M) -> M:
        key = (tag, version)
        if key in MESSAGE_TYPES:
            raise LocalProtocolError(f"message type {key} registered twice")
        schema_of(cls)
        cls.TAG = tag
        cls.VERSION = version
        MESSAGE_TYPES[key] = cls
        return cls

    return deco


# --------------------------------------------------------------- nested structs


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuInfo(WireStruct):
    """One GPU of a provider's box."""

    name: Annotated[str, Size(0, 64)]
    vram_mb: U32


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelOffer(WireStruct):
    """One model a provider serves, with its price, and its release version (0: a model
    not served as a signed release); a buyer asking by name takes the newest."""

    model_id: ModelId
    name: Annotated[str, Size(0, 128)]
    price_per_1k: Amount
    max_context: Annotated[int, Range(1, 2**24)]
    version: Annotated[int, Range(0, 2**63 - 1)] = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage(WireStruct):
    """One turn of a chat prompt."""

    role: Annotated[str, Size(1, 32), Pattern(r"[a-z_]+")]
    content: LongText


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams(WireStruct):
    """How to sample. ``top_k`` 0 = disabled; ``seed`` None = provider's choice."""

    temperature: Annotated[float, Range(0.0, 10.0)] = 1.0
    top_p: Annotated[float, Range(0.0, 1.0)] = 1.0
    top_k: Annotated[int, Range(0, 100_000)] = 0
    seed: U64 | None = None
    stop: Annotated[tuple[Annotated[str, Size(1, 256)], ...], Size(0, 16)] = ()
    logprobs_top_k: Annotated[int, Range(0, 20)] = 0


# -------------------------------------------------------------------- messages


@register("offer")
@dataclass(frozen=True, slots=True, kw_only=True)
class Offer(Message):
    """A provider's standing advertisement (gossip): models, prices, state."""

    provider: PeerIdStr
    provider_address: EthAddress
    region: Region
    power_state: PowerState
    load: Annotated[float, Range(0.0, 1.0)]
    gpus: Annotated[tuple[GpuInfo, ...], Size(0, 16)]
    models: Annotated[tuple[ModelOffer, ...], Size(0, 64)]
    ttl_s: Annotated[int, Range(1, 3600)]
    # Measured by the node (warm-up, then live from its engine), never assumed:
    free_slots: U32 = 0  # jobs it could start now (slots neither serving nor held by a bid)
    tokens_per_s: Annotated[float, Range(0.0, 1e9)] = 0.0  # per job, at the current batch
    ttft_ms: U32 = 0  # time to first token, recent median


@register("rfq")
@dataclass(frozen=True, slots=True, kw_only=True)
class Rfq(Message):
    """A buyer's request for quotes (gossip). Never carries the prompt."""

    job_id: JobId
    buyer: PeerIdStr
    buyer_address: EthAddress
    model_id: ModelId
    prompt_tokens: U32
    max_tokens: MaxTokens
    max_price_per_1k: Amount
    region: Region
    bid_window_ms: Annotated[int, Range(1, 600_000)]


@register("bid")
@dataclass(frozen=True, slots=True, kw_only=True)
class Bid(Message):
    """A provider's quote for one RFQ (direct stream)."""

    job_id: JobId
    provider: PeerIdStr
    provider_address: EthAddress
    price_per_1k: Amount
    est_ttft_ms: U32
    est_tokens_per_s: Annotated[float, Range(0.0, 1e9)]
    chunk_tokens: ChunkTokens
    credit_chunks: CreditChunks
    free_slots: U32 = 0  # slots still free once this bid's own slot is held for it
    # the precision it computes in ("float32", "bfloat16"…; "" = unstated): a signed
    # claim its outputs are judged against (verification tolerates only that much)
    dtype: Annotated[str, Size(0, 32)] = ""


@register("decline")
@dataclass(frozen=True, slots=True, kw_only=True)
class Decline(Message):
    """A provider's refusal to bid, with a reason."""

    job_id: JobId
    provider: PeerIdStr
    reason: DeclineReason
    detail: Text200 = ""


@register("award")
@dataclass(frozen=True, slots=True, kw_only=True)
class Award(Message):
    """The buyer picks a bid; terms are restated so the provider can check them."""

    job_id: JobId
    provider: PeerIdStr
    price_per_1k: Amount
    chunk_tokens: ChunkTokens
    credit_chunks: CreditChunks
    max_tokens: MaxTokens
    resume_offset: U32 = 0


@register("accept")
@dataclass(frozen=True, slots=True, kw_only=True)
class Accept(Message):
    """The provider confirms the award."""

    job_id: JobId
    provider: PeerIdStr


@register("prompt")
@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt(Message):
    """The job's input, sent on the direct stream: chat ``messages`` or raw ``prompt``."""

    job_id: JobId
    messages: Annotated[tuple[ChatMessage, ...], Size(1, 4096)] | None = None
    prompt: LongText | None = None
    params: SamplingParams = SamplingParams()
    resume_token_ids: Annotated[tuple[TokenId, ...], Size(0, 1_000_000)] = ()

    def _invariant(self) -> str | None:
        if (self.messages is None) == (self.prompt is None):
            return "exactly one of messages and prompt must be given"
        return None


@register("chunk")
@dataclass(frozen=True, slots=True, kw_only=True)
class TokenChunk(Message):
    """A run of generated tokens with their log-probs and the running commitment."""

    job_id: JobId
    seq: U32
    token_ids: Annotated[tuple[TokenId, ...], Size(0, 1024)]
    logprobs: Annotated[tuple[LogProb, ...], Size(0, 1024)]
    text: LongText
    chain_hash: Hash32

    def _invariant(self) -> str | None:
        if len(self.token_ids) != len(self.logprobs):
            return f"{len(self.token_ids)} token_ids but {len(self.logprobs)} logprobs"
        return None


@register("eos")
@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfStream(Message):
    """The stream is over; ``result_commitment`` = last chunk's ``chain_hash``."""

    job_id: JobId
    total_tokens: U32
    finish_reason: FinishReason
    result_commitment: Hash32
    prompt_tokens: U32 = 0  # the prompt in the model's tokens, a resumed prefix not counted


@register("voucher")
@dataclass(frozen=True, slots=True, kw_only=True)
class Voucher(Message):
    """A cumulative payment promise signed (EIP-712) by the buyer's Ethereum key.

    The codec checks only its shape; the settlement code verifies the signature.
    """

    job_id: JobId
    buyer_address: EthAddress
    provider_address: EthAddress
    token: EthAddress
    cumulative_amount: Amount
    epoch: U64
    chain_id: Annotated[int, Range(1, 2**64 - 1)]
    contract: EthAddress
    signature: Annotated[bytes, Size(65, 65)]
    # What this job has paid this provider so far, ``cumulative_amount`` included. Not
    # part of the signed EIP-712 voucher: it attributes the channel's one cumulative
    # total to the buyer's concurrent jobs, and the provider checks that the jobs'
    # totals never add up to more than the signed cumulative (VoucherBook.accept).
    job_paid: Amount = 0


@register("cancel")
@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Message):
    """Either side stops the job."""

    job_id: JobId
    reason: Text200 = ""


@register("error")
@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Message):
    """A failure report for one job."""

    job_id: JobId
    code: ErrorCode
    message: Annotated[str, Size(0, 500)] = ""


@register("heartbeat")
@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """Liveness on a job stream (a frozen peer is otherwise never noticed)."""

    job_id: JobId
    seq: U32


# ------------------------------------------------------------- verification jobs

#: The most completion tokens one verification job re-scores (its answer fits a frame).
MAX_SCORED = 2048
#: A non-negative finite float (nats or probability mass).
NonNegative = Annotated[float, Range(0.0, 1e9)]


@register("score_req")
@dataclass(frozen=True, slots=True, kw_only=True)
class ScoreRequest(Message):
    """A buyer asks a provider holding the same model to re-score a completion.

    ``prompt`` is the checked job's encoded :class:`Prompt` (sampling parameters and
    seed included); ``token_ids`` the completion, from its first token (a resumed
    prefix included). Paid per scored token after the answer (a :class:`Voucher` for
    ``job_id`` on the verifier's stream).
    """

    job_id: JobId  # this verification's own id
    buyer_address: EthAddress  # whose channel pays for it
    model_id: ModelId
    prompt: Annotated[bytes, Size(1, 1_000_000)]
    token_ids: Annotated[tuple[TokenId, ...], Size(1, MAX_SCORED)]
    top_n: Annotated[int, Range(0, 20)] = 5
    max_price_per_1k: Amount


@register("score")
@dataclass(frozen=True, slots=True, kw_only=True)
class ScoreResult(Message):
    """The verifier's one teacher-forced pass, per completion position (see
    :class:`market.protocol.verify.Rescore`), and its price for the job."""

    job_id: JobId
    model_id: ModelId  # the model the verifier ran (its content address)
    dtype: Annotated[str, Size(1, 32)]
    sampler: Annotated[str, Size(1, 64)]
    prompt_tokens: U32
    price_per_1k: Amount
    logprobs: Annotated[tuple[LogProb, ...], Size(1, MAX_SCORED)]
    top_ids: Annotated[tuple[Annotated[tuple[TokenId, ...], Size(0, 20)], ...], Size(1, MAX_SCORED)]
    top_logprobs: Annotated[
        tuple[Annotated[tuple[LogProb, ...], Size(0, 20)], ...], Size(1, MAX_SCORED)
    ]
    choice: Annotated[tuple[TokenId, ...], Size(1, MAX_SCORED)]
    margin: Annotated[tuple[NonNegative, ...], Size(1, MAX_SCORED)]
    outside_k: Annotated[tuple[NonNegative, ...], Size(1, MAX_SCORED)]
    outside_p: Annotated[tuple[NonNegative, ...], Size(1, MAX_SCORED)]


@register("fraud")
@dataclass(frozen=True, slots=True, kw_only=True)
class FraudReport(Message):
    """A buyer's signed claim (gossip) that a provider's output failed verification
    twice, by independent verifiers. Nobody acts on it alone: a reader fetches the
    evidence named by ``evidence`` (sha256 of the record) from ``reporter`` and checks
    it itself."""

    provider: PeerIdStr  # the provider reported
    model_id: ModelId
    evidence: Hash32
    reporter: PeerIdStr
    verifiers: Annotated[tuple[PeerIdStr, ...], Size(2, 8)]
    verdict: Annotated[str, Size(1, 300)]


@register("evidence_req")
@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceRequest(Message):
    """Ask a reporter for the evidence record a fraud report names."""

    evidence: Hash32


@register("evidence")
@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceRecord(Message):
    """The encoded :class:`market.protocol.evidence.Evidence` record asked for."""

    evidence: Hash32
    record: Annotated[bytes, Size(1, 1_000_000)]
