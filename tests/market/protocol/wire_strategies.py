"""Hypothesis strategies for every protocol dataclass, derived from its schema.

``message_strategy(cls)`` walks the compiled :mod:`market.protocol.schema` nodes, so
a message added later gets a generator (and round-trip coverage) for free. Values
span the whole allowed range (ints up to their bounds, 256-bit amounts, unicode
text) but sizes stay small so examples are fast.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from market.protocol import MESSAGE_TYPES, LocalProtocolError, Message, TokenChunk
from market.protocol.schema import (
    BoolNode,
    BytesNode,
    EnumNode,
    FloatNode,
    IntNode,
    Node,
    OptionalNode,
    StrNode,
    StructNode,
    TupleNode,
    WireStruct,
    schema_of,
)

_TEXT = st.characters(exclude_categories=("Cs",))


def node_strategy(node: Node) -> st.SearchStrategy[Any]:
    """Valid Python values for one compiled field node."""
    if isinstance(node, IntNode):
        return st.integers(node.lo, node.hi)
    if isinstance(node, FloatNode):
        return st.floats(node.lo, node.hi, allow_nan=False, allow_infinity=False)
    if isinstance(node, BoolNode):
        return st.booleans()
    if isinstance(node, StrNode):
        if node.choices is not None:
            return st.sampled_from(sorted(node.choices))
        hi = min(node.hi, node.lo + 40)
        if node.pattern is not None:
            return st.from_regex(node.pattern, fullmatch=True).filter(
                lambda s: node.lo <= len(s) <= node.hi
            )
        return st.text(_TEXT, min_size=node.lo, max_size=hi)
    if isinstance(node, BytesNode):
        return st.binary(min_size=node.lo, max_size=min(node.hi, node.lo + 48))
    if isinstance(node, EnumNode):
        return st.sampled_from(list(node.cls))
    if isinstance(node, TupleNode):
        return st.lists(
            node_strategy(node.item), min_size=node.lo, max_size=min(node.hi, node.lo + 4)
        ).map(tuple)
    if isinstance(node, OptionalNode):
        return st.none() | node_strategy(node.inner)
    if isinstance(node, StructNode):
        return struct_strategy(node.cls)
    raise TypeError(f"no strategy for {node!r}")


def _fields(cls: type[WireStruct]) -> dict[str, st.SearchStrategy[Any]]:
    return {s.name: node_strategy(s.node) for s in schema_of(cls)}


def _build(cls: type[WireStruct]) -> Any:
    def build(kwargs: dict[str, Any]) -> Any:
        try:
            return cls(**kwargs)
        except LocalProtocolError:
            return None  # a cross-field invariant rejected this draw

    return build


def _item_strategy(cls: type[WireStruct], name: str) -> st.SearchStrategy[Any]:
    node = next(s.node for s in schema_of(cls) if s.name == name)
    assert isinstance(node, TupleNode)
    return node_strategy(node.item)


@st.composite
def _token_chunk(draw: st.DrawFn) -> TokenChunk:
    fields = _fields(TokenChunk)
    n = draw(st.integers(0, 6))
    ids = draw(st.lists(_item_strategy(TokenChunk, "token_ids"), min_size=n, max_size=n))
    lps = draw(st.lists(_item_strategy(TokenChunk, "logprobs"), min_size=n, max_size=n))
    return TokenChunk(
        job_id=draw(fields["job_id"]),
        seq=draw(fields["seq"]),
        token_ids=tuple(ids),
        logprobs=tuple(lps),
        text=draw(fields["text"]),
        chain_hash=draw(fields["chain_hash"]),
    )


_OVERRIDES: dict[type, st.SearchStrategy[Any]] = {TokenChunk: _token_chunk()}


def struct_strategy(cls: type[WireStruct]) -> st.SearchStrategy[Any]:
    """Valid instances of ``cls`` (messages or nested structs)."""
    if cls in _OVERRIDES:
        return _OVERRIDES[cls]
    return st.fixed_dictionaries(_fields(cls)).map(_build(cls)).filter(lambda x: x is not None)


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Valid instances of one registered message type."""
    return struct_strategy(cls)


def any_message() -> st.SearchStrategy[Message]:
    """A valid instance of any registered message type."""
    return st.one_of([message_strategy(c) for c in MESSAGE_TYPES.values()])
