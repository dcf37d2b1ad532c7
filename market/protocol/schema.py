"""Declarative field constraints, compiled from dataclass annotations.

Every protocol dataclass states its rules *in its annotations* and nowhere else::

    JobId = Annotated[bytes, Size(16, 16)]

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Heartbeat(Message):
        job_id: JobId
        seq: Annotated[int, Range(0, 2**32 - 1)]

:func:`schema_of` turns the annotations of a class into a tuple of
:class:`FieldSpec` (one compiled :class:`Node` per field). The same nodes do three
jobs, so validation, encoding and decoding can never disagree:

* ``check(value)`` — semantic validation, run by :meth:`WireStruct.__post_init__`
  on every construction (our misuse → :class:`~market.protocol.errors.LocalProtocolError`);
* ``to_wire(value)`` — the msgpack-ready form (structs become maps in declaration
  order, tuples become arrays, enums their string value, wide ints 32-byte
  big-endian ``bytes``, floats always ``float``);
* ``from_wire(raw)`` — the inverse, checking the shapes the conversion needs;
  :func:`struct_from_wire` then runs ``check`` on each converted field and the
  class's ``_invariant``, raising :class:`Invalid` with a dotted path
  (``gpus[0].vram_mb``) that the codec turns into a
  :class:`~market.protocol.errors.RemoteProtocolError`.

Supported annotations: ``int`` (needs :class:`Range`; add :data:`WIDE` for
256-bit amounts), ``float`` (needs :class:`Range`; must be finite), ``str`` and
``bytes`` (need :class:`Size`; ``str`` may add :class:`Pattern`), ``bool``,
``Literal["a", "b"]`` of strings, ``enum.Enum`` subclasses with ``str`` values,
``tuple[X, ...]`` (needs :class:`Size`), ``X | None`` and nested
:class:`WireStruct` dataclasses. Anything else is rejected when the class is first
compiled, so an unbounded field cannot slip in. Adding a field is one annotated
line.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

from market.protocol.errors import LocalProtocolError

__all__ = [
    "WIDE",
    "FieldSpec",
    "Invalid",
    "Node",
    "Pattern",
    "Range",
    "Size",
    "WireStruct",
    "schema_of",
    "validate",
]

U256_MAX = 2**256 - 1


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive numeric bounds for an ``int`` or ``float`` field."""

    lo: int | float
    hi: int | float


@dataclass(frozen=True, slots=True)
class Size:
    """Inclusive ``len()`` bounds: code points of a ``str``, bytes of a ``bytes``,
    items of a ``tuple``."""

    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class Pattern:
    """A regular expression the whole ``str`` must match (``re.fullmatch``)."""

    regex: str


@dataclass(frozen=True, slots=True)
class _Wide:
    """Marker: encode this ``int`` as 32 bytes big-endian (msgpack stops at 64 bits)."""


WIDE = _Wide()


class Invalid(Exception):
    """A value broke a rule; ``path`` grows as the error bubbles up through structs."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def where(self) -> str:
        """The dotted path of the offending value, e.g. ``gpus[0].vram_mb``."""
        out = ""
        for seg in reversed(self.path):
            out += seg if seg.startswith("[") or not out else "." + seg
        return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Node:
    """One compiled field type. Subclasses implement the three conversions."""

    __slots__ = ()

    def check(self, value: Any) -> None:
        """Raise :class:`Invalid` unless ``value`` is a valid Python value."""
        raise NotImplementedError

    def to_wire(self, value: Any) -> Any:
        """The msgpack-ready form of a *valid* value."""
        raise NotImplementedError

    def from_wire(self, raw: Any) -> Any:
        """Convert decoded msgpack data back; raise :class:`Invalid` on wrong shapes."""
        raise NotImplementedError


class IntNode(Node):
    __slots__ = ("hi", "lo", "wide")

    def __init__(self, lo: int, hi: int, wide: bool) -> None:
        self.lo, self.hi, self.wide = lo, hi, wide

    def check(self, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"expected int, got {type(value).__name__}")
        if not self.lo <= value <= self.hi:
            raise Invalid(f"{_short(value)} out of range [{self.lo}, {self.hi}]")

    def to_wire(self, value: Any) -> Any:
        return int(value).to_bytes(32, "big") if self.wide else int(value)

    def from_wire(self, raw: Any) -> Any:
        if self.wide:
            if type(raw) is not bytes or len(raw) != 32:
                raise Invalid("expected a 32-byte big-endian integer")
            return int.from_bytes(raw, "big")
        if type(raw) is not int:
            raise Invalid(f"expected int, got {type(raw).__name__}")
        return raw


class FloatNode(Node):
    __slots__ = ("hi", "lo")

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any) -> None:
        if not isinstance(value, float | int) or isinstance(value, bool):
            raise Invalid(f"expected float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise Invalid(f"{value!r} is not a finite number")
        if not self.lo <= value <= self.hi:
            raise Invalid(f"{_short(value)} out of range [{self.lo}, {self.hi}]")

    def to_wire(self, value: Any) -> Any:
        return float(value)

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is not float:
            raise Invalid(f"expected float64, got {type(raw).__name__}")
        return raw


class BoolNode(Node):
    __slots__ = ()

    def check(self, value: Any) -> None:
        if type(value) is not bool:
            raise Invalid(f"expected bool, got {type(value).__name__}")

    def to_wire(self, value: Any) -> Any:
        return value

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is not bool:
            raise Invalid(f"expected bool, got {type(raw).__name__}")
        return raw


class StrNode(Node):
    __slots__ = ("choices", "hi", "lo", "pattern")

    def __init__(
        self,
        lo: int,
        hi: int,
        pattern: re.Pattern[str] | None,
        choices: frozenset[str] | None,
    ) -> None:
        self.lo, self.hi, self.pattern, self.choices = lo, hi, pattern, choices

    def check(self, value: Any) -> None:
        if not isinstance(value, str):
            raise Invalid(f"expected str, got {type(value).__name__}")
        if self.choices is not None:
            if value not in self.choices:
                raise Invalid(f"{_short(value)} is not one of {sorted(self.choices)}")
            return
        if not self.lo <= len(value) <= self.hi:
            raise Invalid(f"length {len(value)} outside [{self.lo}, {self.hi}]")
        if self.pattern is not None and self.pattern.fullmatch(value) is None:
            raise Invalid(f"{_short(value)} does not match {self.pattern.pattern!r}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Invalid("string is not valid UTF-8 (lone surrogate)") from None

    def to_wire(self, value: Any) -> Any:
        return value if type(value) is str else str.__str__(value)

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is not str:
            raise Invalid(f"expected str, got {type(raw).__name__}")
        return raw


class BytesNode(Node):
    __slots__ = ("hi", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any) -> None:
        if type(value) is not bytes:
            raise Invalid(f"expected bytes, got {type(value).__name__}")
        if not self.lo <= len(value) <= self.hi:
            if self.lo == self.hi:
                raise Invalid(f"expected exactly {self.lo} bytes, got {len(value)}")
            raise Invalid(f"length {len(value)} outside [{self.lo}, {self.hi}]")

    def to_wire(self, value: Any) -> Any:
        return value

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is not bytes:
            raise Invalid(f"expected bytes, got {type(raw).__name__}")
        return raw


class EnumNode(Node):
    __slots__ = ("cls",)

    def __init__(self, cls: type[enum.Enum]) -> None:
        self.cls = cls

    def check(self, value: Any) -> None:
        if not isinstance(value, self.cls):
            raise Invalid(f"expected {self.cls.__name__}, got {_short(value)}")

    def to_wire(self, value: Any) -> Any:
        return value.value

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is not str:
            raise Invalid(f"expected str, got {type(raw).__name__}")
        try:
            return self.cls(raw)
        except ValueError:
            raise Invalid(f"{_short(raw)} is not a {self.cls.__name__}") from None


class TupleNode(Node):
    __slots__ = ("hi", "item", "lo")

    def __init__(self, item: Node, lo: int, hi: int) -> None:
        self.item, self.lo, self.hi = item, lo, hi

    def _size(self, n: int) -> None:
        if not self.lo <= n <= self.hi:
            raise Invalid(f"{n} items, expected between {self.lo} and {self.hi}")

    def check(self, value: Any) -> None:
        if type(value) is not tuple:
            raise Invalid(f"expected tuple, got {type(value).__name__}")
        self._size(len(value))
        check = self.item.check
        for i, x in enumerate(value):
            try:
                check(x)
            except Invalid as e:
                e.path.append(f"[{i}]")
                raise

    def to_wire(self, value: Any) -> Any:
        conv = self.item.to_wire
        return [conv(x) for x in value]

    def from_wire(self, raw: Any) -> Any:
        if type(raw) is not tuple:
            raise Invalid(f"expected array, got {type(raw).__name__}")
        self._size(len(raw))
        conv = self.item.from_wire
        out = []
        for i, x in enumerate(raw):
            try:
                out.append(conv(x))
            except Invalid as e:
                e.path.append(f"[{i}]")
                raise
        return tuple(out)


class OptionalNode(Node):
    __slots__ = ("inner",)

    def __init__(self, inner: Node) -> None:
        self.inner = inner

    def check(self, value: Any) -> None:
        if value is not None:
            self.inner.check(value)

    def to_wire(self, value: Any) -> Any:
        return None if value is None else self.inner.to_wire(value)

    def from_wire(self, raw: Any) -> Any:
        return None if raw is None else self.inner.from_wire(raw)


class StructNode(Node):
    __slots__ = ("cls",)

    def __init__(self, cls: type[WireStruct]) -> None:
        self.cls = cls

    def check(self, value: Any) -> None:
        # A struct instance validated itself when it was constructed.
        if type(value) is not self.cls:
            raise Invalid(f"expected {self.cls.__name__}, got {type(value).__name__}")

    def to_wire(self, value: Any) -> Any:
        return struct_to_wire(value)

    def from_wire(self, raw: Any) -> Any:
        return struct_from_wire(self.cls, raw)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a protocol dataclass: its name and compiled :class:`Node`."""

    name: str
    node: Node


class WireStruct:
    """Base of every protocol dataclass: validates itself on construction.

    Subclasses are ``@dataclass(frozen=True, slots=True, kw_only=True)``; their
    field rules live in the annotations. Cross-field rules go in
    :meth:`_invariant`, which returns an error text or ``None``. Do not define a
    ``__post_init__`` in a subclass: the decoder builds objects without calling it
    (after running the very same checks), so logic there would be skipped.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        validate(self)

    def _invariant(self) -> str | None:
        """Cross-field rule; return a reason when broken. Override as needed."""
        return None


S = TypeVar("S", bound=WireStruct)

_SCHEMAS: dict[type, tuple[FieldSpec, ...]] = {}


def schema_of(cls: type[WireStruct]) -> tuple[FieldSpec, ...]:
    """The compiled field specs of ``cls``, in declaration order (cached)."""
    specs = _SCHEMAS.get(cls)
    if specs is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        hints = typing.get_type_hints(cls, include_extras=True)
        specs = tuple(
            FieldSpec(f.name, _compile(hints[f.name], f"{cls.__name__}.{f.name}"))
            for f in dataclasses.fields(cls)
        )
        _SCHEMAS[cls] = specs
    return specs


def validate(obj: WireStruct) -> None:
    """Check every field of ``obj`` and its invariant; raise ``LocalProtocolError``."""
    cls = type(obj)
    for spec in schema_of(cls):
        try:
            spec.node.check(getattr(obj, spec.name))
        except Invalid as e:
            e.path.append(spec.name)
            raise LocalProtocolError(f"{cls.__name__}.{e.where()}: {e.message}") from None
    reason = obj._invariant()
    if reason is not None:
        raise LocalProtocolError(f"{cls.__name__}: {reason}")


def struct_to_wire(obj: WireStruct) -> dict[str, Any]:
    """``obj`` as a map of field name → wire value, in declaration order."""
    return {s.name: s.node.to_wire(getattr(obj, s.name)) for s in schema_of(type(obj))}


def struct_from_wire(cls: type[S], raw: Any) -> S:
    """Rebuild a ``cls`` from a decoded map; raise :class:`Invalid` on any problem."""
    if type(raw) is not dict:
        raise Invalid(f"expected a map for {cls.__name__}, got {type(raw).__name__}")
    specs = schema_of(cls)
    if len(raw) != len(specs) or any(s.name not in raw for s in specs):
        names = {s.name for s in specs}
        unknown = sorted(repr(k)[:40] for k in raw if k not in names)
        missing = sorted(n for n in names if n not in raw)
        parts = []
        if unknown:
            parts.append("unknown field(s) " + ", ".join(unknown[:5]))
        if missing:
            parts.append("missing field(s) " + ", ".join(missing[:5]))
        raise Invalid(f"{cls.__name__}: " + "; ".join(parts))
    obj = object.__new__(cls)
    for s in specs:
        node = s.node
        try:
            value = node.from_wire(raw[s.name])
            node.check(value)
        except Invalid as e:
            e.path.append(s.name)
            raise
        object.__setattr__(obj, s.name, value)
    # Fields are checked above; building through object.__new__ skips the second,
    # redundant check that __post_init__ would run. Subclasses must therefore put
    # cross-field rules in _invariant, never in a __post_init__ of their own.
    reason = obj._invariant()
    if reason is not None:
        raise Invalid(reason)
    return obj


# ---------------------------------------------------------------- compilation


def _need(meta: list[object], kind: type, where: str) -> Any:
    for m in meta:
        if isinstance(m, kind):
            return m
    raise TypeError(f"{where}: annotation needs a {kind.__name__}(...) bound")


def _compile(tp: Any, where: str) -> Node:
    meta: list[object] = []
    if typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        tp, meta = args[0], list(args[1:])
    origin = typing.get_origin(tp)
    node: Node
    if tp is bool:
        node = BoolNode()
    elif tp is int:
        r = _need(meta, Range, where)
        wide = any(isinstance(m, _Wide) for m in meta)
        limit = (0, U256_MAX) if wide else (-(2**63), 2**64 - 1)
        if not (limit[0] <= r.lo <= r.hi <= limit[1]):
            raise TypeError(f"{where}: Range {r} does not fit the wire encoding")
        node = IntNode(int(r.lo), int(r.hi), wide)
    elif tp is float:
        r = _need(meta, Range, where)
        node = FloatNode(float(r.lo), float(r.hi))
    elif tp is str:
        sz = _need(meta, Size, where)
        pats = [m for m in meta if isinstance(m, Pattern)]
        pattern = re.compile(pats[0].regex) if pats else None
        node = StrNode(sz.lo, sz.hi, pattern, None)
    elif tp is bytes:
        sz = _need(meta, Size, where)
        node = BytesNode(sz.lo, sz.hi)
    elif origin is Literal:
        choices = typing.get_args(tp)
        if not all(type(c) is str for c in choices):
            raise TypeError(f"{where}: only Literal strings are supported")
        node = StrNode(0, 0, None, frozenset(choices))
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        if not all(type(m.value) is str for m in tp):
            raise TypeError(f"{where}: enum values must be str")
        node = EnumNode(tp)
    elif origin is tuple:
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: use tuple[X, ...]")
        sz = _need(meta, Size, where)
        node = TupleNode(_compile(args[0], where + "[]"), sz.lo, sz.hi)
    elif origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) != 1 or len(typing.get_args(tp)) != 2:
            raise TypeError(f"{where}: only `X | None` unions are supported")
        node = OptionalNode(_compile(members[0], where))
    elif isinstance(tp, type) and issubclass(tp, WireStruct) and dataclasses.is_dataclass(tp):
        node = StructNode(tp)
        schema_of(tp)  # compile nested structs eagerly
    else:
        raise TypeError(f"{where}: unsupported annotation {tp!r}")
    return node
