"""Reading and checking a gateway request: the body, its JSON, and every field against a limit.

Everything here runs before the market sees a request, and each refusal is the
caller's fault (a 4xx naming the limit crossed):

* the body is bounded *while* it is read: a ``Content-Length`` over
  :data:`MAX_BODY_BYTES` is refused before a byte of it is read, a chunked body as
  soon as it passes the limit (413), a client too slow to send it is cut off (408);
* the JSON's nesting is measured by :func:`json_depth`, which does not recurse,
  before any recursive parser sees the text. (Importing web3 pulls in ``py_ecc``,
  which raises the recursion limit to 100,000; with it the C ``json`` decoder
  overflows the C stack on deep input and the process dies. See also
  :func:`market.gateway.serve.restore_recursion_limit`.)
* each field is typed and checked against the limits of the market's own messages
  (:mod:`market.protocol.messages`), and the prompt is encoded the way the SDK will
  send it, so a request too big for the wire is refused here and not as a failed job;
* the caller's own deadline, when its client states one in a header, is read by
  :func:`job_timeout_s` (a bad value is ignored, never refused: it is a hint).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import Any

import trio
from starlette.requests import ClientDisconnect, Request

from market.protocol import MAX_MESSAGE, LocalProtocolError, Prompt
from market.protocol.codec import encode_frame
from market.sdk.types import GenerationParams

__all__ = [
    "BODY_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TIMEOUT_S",
    "TIMEOUT_HEADERS",
    "BadRequest",
    "ClientGone",
    "CompletionRequest",
    "job_timeout_s",
    "json_depth",
    "parse_json",
    "parse_request",
    "read_body",
]

MAX_BODY_BYTES = 1 << 20
"""Largest request body read (bytes); a bigger one is refused (413) while it is read."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted, checked before any parser sees the body."""
BODY_TIMEOUT_S = 30.0
"""Longest a client may take to send its body (408 after)."""
MAX_TIMEOUT_S = 3600.0
"""Longest deadline a caller's header may ask for; a longer one is cut to this."""
TIMEOUT_HEADERS = ("x-stainless-timeout", "x-stainless-read-timeout")
"""Where the official OpenAI clients state how long they will wait for the answer
(seconds), in the order they are read; the first usable one wins."""
ANSWER_MARGIN_S = 1.0
"""How much sooner than the caller's deadline the job's own one falls, so that a
"market busy" answer still reaches a caller that is about to stop listening."""

# The market's limits on what one job carries (market.protocol.messages), checked here
# so that the caller hears which one it crossed instead of a job failing later.
MAX_MESSAGES = 4096  # Prompt.messages
MAX_STOPS = 4  # GenerationParams.stop (the wire takes 16)
MAX_STOP_CHARS = 256  # SamplingParams.stop items
MAX_TOKENS = 1_000_000  # Rfq.max_tokens, Award.max_tokens
MAX_TEMPERATURE = 5.0  # GenerationParams.temperature (the wire takes 10)
MAX_TOP_K = 100_000  # SamplingParams.top_k
MAX_TOP_LOGPROBS = 20  # SamplingParams.logprobs_top_k
MAX_SEED = 2**64 - 1  # SamplingParams.seed (U64)
MAX_MODEL_CHARS = 128  # ModelOffer.name (an id is 64 hex digits)


class BadRequest(Exception):
    """A request the gateway refuses, with the OpenAI error fields it answers with."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


class ClientGone(Exception):
    """The client hung up before its request was whole: there is no one to answer."""


# ----------------------------------------------------------------- the body


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) past :data:`MAX_BODY_BYTES` before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_big()  # (a malformed length never gets here: the HTTP parser refuses it)
    body = bytearray()
    with trio.move_on_after(BODY_TIMEOUT_S) as timer:
        try:
            async for piece in request.stream():
                body += piece
                if len(body) > MAX_BODY_BYTES:
                    raise _too_big()
        except ClientDisconnect:
            raise ClientGone() from None
    if timer.cancelled_caught:
        raise BadRequest(f"the request body took over {BODY_TIMEOUT_S:.0f} s to arrive", status=408)
    return bytes(body)


def _too_big() -> BadRequest:
    return BadRequest(f"request body over the limit of {MAX_BODY_BYTES} bytes", status=413)


# ----------------------------------------------------------------- the deadline


def job_timeout_s(headers: Mapping[str, str], default: float | None = None) -> float | None:
    """The job's deadline in seconds (queueing included), from the caller's own.

    The official ``openai`` clients send how long they will wait for the answer in
    :data:`TIMEOUT_HEADERS` (600 s unless the caller chose otherwise). The job then
    ends :data:`ANSWER_MARGIN_S` before that (half of it for a very short one), so its
    "market busy" answer arrives while the caller still listens; a deadline over
    :data:`MAX_TIMEOUT_S` is cut to it. A value that is not a positive, finite number
    of seconds is ignored (it is a hint, not part of the request): ``default`` then
    (``None``: the buyer client's own default, ``BuyerConfig.job_timeout_s``).

    The deadline is the whole job's. For a non-streaming caller that is exactly its
    own; a streaming one waits that long at most for the first token (the gateway
    answers nothing before it), but would read a longer stream than that, which the
    job's deadline then cuts short.
    """
    for name in TIMEOUT_HEADERS:
        raw = headers.get(name)
        if raw is None or len(raw) > 32:
            continue
        try:
            asked = float(raw)
        except ValueError:
            continue
        if math.isfinite(asked) and asked > 0:
            asked = min(asked, MAX_TIMEOUT_S)
            return max(asked - ANSWER_MARGIN_S, asked / 2)
    return default


# ----------------------------------------------------------------- JSON

# One JSON string from its opening quote, escapes understood; one that never closes
# runs to the end of the text (a decoder fails there too, and nothing after it
# nests). Each alternative excludes the next one's first character, so a match never
# backtracks and every quote is scanned once: linear time on any input.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")  # +1 / -1 once 1 is subtracted


def json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON ``text``, without recursion.

    Brackets inside strings do not count. Works on any bytes (for UTF-8 text the
    answer is what a decoder would reach), in linear time and C-speed passes: strings
    removed, brackets kept, then the running sum of +1/-1 steps.
    """
    steps = _STRING.sub(b"", text).translate(None, _NOT_BRACKETS).translate(_STEPS)
    if not steps:
        return 0
    return max(0, int(max(accumulate(map(operator.sub, steps, repeat(1))))))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object: UTF-8, nested at most :data:`MAX_JSON_DEPTH` deep."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body must be JSON in UTF-8") from None
    # A body with few brackets cannot nest deep: the common case skips the scan.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


# ----------------------------------------------------------------- fields


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest:
    """A checked ``/v1/chat/completions`` or ``/v1/completions`` request."""

    model: str
    messages: list[dict[str, str]] | None
    prompt: str | None
    params: GenerationParams
    stream: bool
    include_usage: bool
    want_logprobs: bool


def parse_request(data: dict[str, Any], chat: bool) -> CompletionRequest:
    """Check every field of a parsed body; :class:`BadRequest` names the first bad one."""
    model = _model(data)
    params = _params(data)
    if chat:
        messages, prompt = _messages(data), None
    else:
        messages, prompt = None, _prompt(data)
    _fits_the_wire(messages, prompt, params)
    return CompletionRequest(
        model=model,
        messages=messages,
        prompt=prompt,
        params=params,
        stream=_opt(data, "stream", (bool,), False),
        include_usage=_opt(
            _opt(data, "stream_options", (dict,), {}), "include_usage", (bool,), False
        ),
        want_logprobs=bool(data.get("logprobs")),
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _opt(data: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"'{key}' has the wrong type (got a boolean)", key)
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BadRequest(f"'{key}' must be {names}, got {type(value).__name__}", key)
    return value


def _ranged(data: dict[str, Any], key: str, lo: int, hi: int, default: int | None) -> Any:
    value = _opt(data, key, (int,), default)
    if value is not None and not lo <= value <= hi:
        raise BadRequest(f"'{key}' must be between {lo:,} and {hi:,}, got {_show(value)}", key)
    return value


def _real(data: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    value = _opt(data, key, (int, float), default)
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not lo <= number <= hi:  # NaN fails too
        raise BadRequest(f"'{key}' must be between {lo:g} and {hi:g}, got {_show(value)}", key)
    return number


def _params(data: dict[str, Any]) -> GenerationParams:
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _ranged(data, key, 1, MAX_TOKENS, 128)
    stop = data.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise BadRequest(f"'stop' takes at most {MAX_STOPS} strings, got {len(stops)}", "stop")
    if any(not 1 <= len(s) <= MAX_STOP_CHARS for s in stops):
        raise BadRequest(f"each 'stop' string takes 1 to {MAX_STOP_CHARS} characters", "stop")
    if _opt(data, "n", (int,), 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    # The legacy completions API gives the count of top logprobs in "logprobs".
    legacy = isinstance(data.get("logprobs"), int) and not isinstance(data["logprobs"], bool)
    top_key = "logprobs" if legacy else "top_logprobs"
    try:
        return GenerationParams(
            max_tokens=max_tokens,
            temperature=_real(data, "temperature", 0.0, MAX_TEMPERATURE, 0.0),
            top_p=_top_p(data),
            top_k=_ranged(data, "top_k", 0, MAX_TOP_K, 0),
            stop=stops,
            seed=_ranged(data, "seed", 0, MAX_SEED, None),
            logprobs_top_k=_ranged(data, top_key, 0, MAX_TOP_LOGPROBS, 0),
        )
    except ValueError as exc:  # a rule of GenerationParams not mirrored above
        raise BadRequest(str(exc)) from None


def _top_p(data: dict[str, Any]) -> float:
    top_p = _real(data, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0.0:
        raise BadRequest("'top_p' must be above 0 and at most 1, got 0", "top_p")
    return top_p


def _messages(data: dict[str, Any]) -> list[dict[str, str]]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(
            f"'messages' holds {len(messages):,} messages; the market carries at most "
            f"{MAX_MESSAGES} in one job",
            "messages",
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(
                f"messages[{i}] needs a role of system, user or assistant", f"messages[{i}]"
            )
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise BadRequest(
                    f"messages[{i}].content: only text parts are supported", f"messages[{i}]"
                )
            content = "".join(parts)  # type: ignore[arg-type]
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}]")
        out.append({"role": m["role"], "content": content})
    return out


def _prompt(data: dict[str, Any]) -> str:
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", "prompt")
    return prompt


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required", "model")
    if len(model) > MAX_MODEL_CHARS:
        raise BadRequest(f"'model' names take at most {MAX_MODEL_CHARS} characters", "model")
    return model


def _fits_the_wire(
    messages: list[dict[str, str]] | None, prompt: str | None, p: GenerationParams
) -> None:
    """Build and encode the Prompt the SDK will send, and refuse what the market cannot carry."""
    param = "messages" if messages is not None else "prompt"
    try:
        wire = p.prompt_message(bytes(16), messages, prompt)
        size = len(encode_frame(wire, Prompt.TAG, Prompt.VERSION, limit=4 * MAX_BODY_BYTES))
    except LocalProtocolError as exc:
        raise BadRequest(f"the market cannot carry this {param}: {exc}", param) from None
    if size > MAX_MESSAGE:
        raise BadRequest(
            f"the {param} takes {size:,} bytes on the wire; the market carries at most "
            f"{MAX_MESSAGE:,} bytes in one message",
            param,
        )
