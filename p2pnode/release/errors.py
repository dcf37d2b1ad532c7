"""Why a release was refused: one exception type per rule, each a sentence.

Every refusal is a :class:`ReleaseError` (a ``ValueError``, so the CLI prints its
message as is, :func:`p2pnode.cli.errors.explain`). Its message says what was wrong and
what was expected. The subclasses let a caller (the node, a test) tell the rules apart:

* :class:`MalformedRelease`: the bytes are not a release manifest (size, shape, types,
  limits, non-canonical encoding), or a file or key on disk is not what it should be;
* :class:`BadSignature`: the publisher's ed25519 signature does not verify;
* :class:`UnknownPublisher`: signed by a key this node does not trust;
* :class:`ExpiredRelease`: past its expiry, or dated in the future;
* :class:`Rollback`: a version below the last one trusted for that model;
* :class:`ConflictingRelease`: the version already trusted, with other content
  (a freeze or mix attack, or a publisher who signed twice);
* :class:`ChunkMismatch`: a chunk whose bytes are not the ones the manifest lists;
* :class:`ContentMismatch`: a directory whose files, sizes or content address are not
  the manifest's (mix-and-match of two releases);
* :class:`GoldenMismatch`: a loaded engine that does not reproduce the golden outputs.
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "ChunkMismatch",
    "ConflictingRelease",
    "ContentMismatch",
    "ExpiredRelease",
    "GoldenMismatch",
    "MalformedRelease",
    "ReleaseError",
    "Rollback",
    "UnknownPublisher",
]


class ReleaseError(ValueError):
    """A release (or a part of one) was refused; the message says why."""


class MalformedRelease(ReleaseError):
    """Bytes or files that are not a well-formed release manifest or publisher key."""


class BadSignature(ReleaseError):
    """The manifest's signature is not its publisher's."""


class UnknownPublisher(ReleaseError):
    """The manifest is signed by a key that is not among the trusted publishers."""


class ExpiredRelease(ReleaseError):
    """The manifest is outside its validity window (expired, or created in the future)."""


class Rollback(ReleaseError):
    """A lower version than the last one trusted for this publisher and model."""


class ConflictingRelease(ReleaseError):
    """The same version as the last one trusted, but different content."""


class ChunkMismatch(ReleaseError):
    """A chunk that is not the one the manifest lists at that path and index."""


class ContentMismatch(ReleaseError):
    """A directory that does not hold exactly the manifest's files and content address."""


class GoldenMismatch(ReleaseError):
    """An engine whose greedy outputs are not the manifest's golden outputs."""
