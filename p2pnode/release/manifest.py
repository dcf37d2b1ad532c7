"""Release manifests: what a publisher signs about one version of one model.

A :class:`Manifest` names a model (``name``), a monotonic integer ``version``, the
model's ``content_address`` (what :func:`p2pnode.serving.loader.load_model` computes for
the directory: the address buyers ask for), the stored ``dtype``, the ``chunk_size``,
every file (relative path, size, the sha256 of each chunk), ``created_at`` and
``expires_at`` (unix seconds), a few golden greedy outputs (prompt, max_tokens, token
ids: :mod:`p2pnode.release.golden`) and the ``publisher``'s ed25519 public key.

**Chunk size: 1 MiB** (:data:`CHUNK_SIZE`), the unit a node fetches from a peer,
checks (:func:`check_chunk`) and writes. Why 1 MiB:

* *re-fetch after a kill*: a download loses at most the chunk in flight on each peer
  stream, 1 MiB each: 8 MiB with 8 streams, under 2 % of a 540 MB model;
* *hash overhead*: sha256 runs at about 1.7 GB/s on this machine's CPU (SHA-NI), so a
  chunk costs about 0.6 ms to check, and the per-chunk bookkeeping (one request, one
  hash, one progress row) is spread over a whole MiB; the manifest carries 32 bytes
  per MiB (0.003 % of the model: 17 KB for SmolLM2 in fp32, 4.3 MB for a 140 GB model);
* *libp2p*: Hearth's stream framing caps a frame at 1 MiB
  (:mod:`p2pnode.net.framing`) and yamux opens a stream with a 256 KiB window that
  grows to 16 MiB, so a chunk travels as four 256 KiB frames, each one window, and a
  request per chunk keeps several windows in flight on a home uplink. Smaller chunks
  (IPFS's 256 KiB) make manifests of large models too big to hold and check; larger
  ones (Dragonfly's 4 MiB pieces) raise the re-fetch after a kill fourfold.

Other chunk sizes (a power of two from 4 KiB to 64 MiB) are accepted, since the size
is signed with the rest.

**Encoding.** The manifest is a canonical msgpack frame (:mod:`market.protocol.codec`,
tag ``release-manifest``): the same manifest always gives the same bytes and every
field has its bounds in its annotation. The publisher signs
``RELEASE_DOMAIN || manifest bytes`` with ed25519 (:class:`market.protocol.SigningKey`);
the domain prefix keeps that signature from being valid as anything else the same key
signs. A release file (``*.hearth-release``) is the frame ``release`` holding the
manifest bytes and the signature.

**Decoding is strict.** :func:`decode_release` refuses, with
:class:`~p2pnode.release.errors.MalformedRelease` and a reason, anything over
:data:`MAX_RELEASE_BYTES`, undecodable msgpack, unknown or missing fields, wrong types,
values out of bounds, non-canonical bytes, files out of order or repeated, paths that
could escape the directory, chunk counts that do not match the sizes. It does not
check the signature: :func:`open_release` does both, and a trust store checks first
that the publisher is trusted (:mod:`p2pnode.release.trust`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from market.protocol import (
    LocalProtocolError,
    RemoteProtocolError,
    SigningKey,
    decode_frame,
    encode_frame,
    verify_ed25519,
)
from market.protocol.schema import Pattern, Range, Size, WireStruct
from p2pnode.release.errors import (
    BadSignature,
    ChunkMismatch,
    ContentMismatch,
    MalformedRelease,
    ReleaseError,
)
from p2pnode.release.files import PATH_PATTERN, Progress, chunk_hashes, is_local, release_files

if TYPE_CHECKING:
    from p2pnode.serving.loader import LoadedModel

__all__ = [
    "CHUNK_SIZE",
    "MAX_CHUNKS",
    "MAX_FILES",
    "MAX_RELEASE_BYTES",
    "NAME_PATTERN",
    "RELEASE_DOMAIN",
    "FileEntry",
    "GoldenOutput",
    "Manifest",
    "SignedRelease",
    "build_manifest",
    "check_chunk",
    "check_directory",
    "decode_release",
    "open_release",
    "read_release",
]

#: The chunk size this release format is built around (see the module docstring).
CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 12
MAX_CHUNK_SIZE = 1 << 26
#: Signature domain separator (versioned, NUL-terminated).
RELEASE_DOMAIN = b"hearth/release/v1\x00"
#: Most files in one release.
MAX_FILES = 4096
#: Most chunks in one release: 256 GiB of model at 1 MiB, 8 MiB of chunk hashes.
MAX_CHUNKS = 1 << 18
#: Largest release file accepted (the chunk hashes at their most, plus the rest).
MAX_RELEASE_BYTES = 10 * (1 << 20)
_DIGEST = 32

_MANIFEST_TAG = ("release-manifest", 1)
_SIGNED_TAG = ("release", 1)

#: What a model name must match: a letter or digit, then letters, digits and ``._-``.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
ModelName = Annotated[str, Size(1, 64), Pattern(NAME_PATTERN)]
ContentAddress = Annotated[str, Size(71, 71), Pattern(r"sha256:[0-9a-f]{64}")]
UnixSeconds = Annotated[int, Range(0, 2**40)]
TokenId = Annotated[int, Range(0, 2**31 - 1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry(WireStruct):
    """One file of a release: its path, size and the sha256 of each chunk."""

    path: Annotated[str, Size(1, 1100), Pattern(PATH_PATTERN)]
    size: Annotated[int, Range(0, MAX_CHUNKS * MAX_CHUNK_SIZE)]
    chunk_hashes: Annotated[bytes, Size(0, _DIGEST * MAX_CHUNKS)]  # 32 bytes per chunk

    def _invariant(self) -> str | None:
        if is_local(self.path):
            return f"{self.path!r} is local to a machine and never part of a release"
        if len(self.chunk_hashes) % _DIGEST:
            return "chunk_hashes must be whole 32-byte sha256 digests"
        return None

    @property
    def chunks(self) -> int:
        """How many chunks the file has."""
        return len(self.chunk_hashes) // _DIGEST

    def chunk_hash(self, index: int) -> bytes:
        """The sha256 of chunk ``index``."""
        return self.chunk_hashes[index * _DIGEST : (index + 1) * _DIGEST]


@dataclass(frozen=True, slots=True, kw_only=True)
class GoldenOutput(WireStruct):
    """A greedy completion of ``prompt`` (raw text, no chat template) by the release."""

    prompt: Annotated[str, Size(1, 2000)]
    max_tokens: Annotated[int, Range(1, 256)]
    token_ids: Annotated[tuple[TokenId, ...], Size(0, 256)]

    def _invariant(self) -> str | None:
        if len(self.token_ids) > self.max_tokens:
            return "more token_ids than max_tokens"
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest(WireStruct):
    """One version of one model, as its publisher signs it (see the module docstring)."""

    name: ModelName
    version: Annotated[int, Range(1, 2**63 - 1)]
    content_address: ContentAddress
    dtype: Annotated[str, Size(1, 64), Pattern(r"[a-z0-9][a-z0-9_+.:-]*")]
    chunk_size: Annotated[int, Range(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)]
    files: Annotated[tuple[FileEntry, ...], Size(1, MAX_FILES)]
    created_at: UnixSeconds
    expires_at: UnixSeconds
    golden: Annotated[tuple[GoldenOutput, ...], Size(1, 16)]
    publisher: Annotated[bytes, Size(32, 32)]

    def _invariant(self) -> str | None:
        if self.chunk_size & (self.chunk_size - 1):
            return f"chunk_size {self.chunk_size} is not a power of two"
        if self.expires_at <= self.created_at:
            return "expires_at must be after created_at"
        seen: set[str] = set()
        previous = ""
        total = 0
        for f in self.files:
            if f.path <= previous:
                return f"files must be sorted by path, each once ({f.path!r} after {previous!r})"
            if f.path.lower() in seen:
                return f"{f.path!r} differs from another file only in case"
            seen.add(f.path.lower())
            previous = f.path
            want = -(-f.size // self.chunk_size)
            if f.chunks != want:
                return (
                    f"{f.path!r}: {f.size} bytes make {want} chunks of {self.chunk_size}, "
                    f"not {f.chunks}"
                )
            total += want
        if total > MAX_CHUNKS:
            return f"{total} chunks, over the limit of {MAX_CHUNKS}"
        return None

    @property
    def total_size(self) -> int:
        """Bytes in all the files."""
        return sum(f.size for f in self.files)

    @property
    def chunk_count(self) -> int:
        """Chunks in all the files."""
        return sum(f.chunks for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        """The entry of ``path``, or ``None``."""
        for f in self.files:
            if f.path == path:
                return f
        return None

    def label(self) -> str:
        """``name v<version>``, as messages name the release."""
        return f"{self.name} v{self.version}"

    def encode(self) -> bytes:
        """The canonical bytes (what is signed)."""
        try:
            return encode_frame(self, *_MANIFEST_TAG, limit=MAX_RELEASE_BYTES - 256)
        except LocalProtocolError as e:
            raise MalformedRelease(str(e)) from None

    def sign(self, key: SigningKey) -> SignedRelease:
        """Sign with the publisher's key (which must be :attr:`publisher`)."""
        if key.public_bytes != self.publisher:
            raise ReleaseError(
                f"the key {key.public_bytes.hex()} is not this manifest's publisher "
                f"{self.publisher.hex()}"
            )
        body = self.encode()
        return SignedRelease(
            manifest=self, manifest_bytes=body, signature=key.sign(RELEASE_DOMAIN + body)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _SignedFrame(WireStruct):
    manifest: Annotated[bytes, Size(1, MAX_RELEASE_BYTES - 256)]
    signature: Annotated[bytes, Size(64, 64)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRelease:
    """A manifest, its canonical bytes and the publisher's signature over them."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes

    @property
    def digest(self) -> str:
        """sha256 (hex) of the signed manifest bytes: two releases with the same digest
        say exactly the same thing."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    def encode(self) -> bytes:
        """The release file's bytes."""
        frame = _SignedFrame(manifest=self.manifest_bytes, signature=self.signature)
        return encode_frame(frame, *_SIGNED_TAG, limit=MAX_RELEASE_BYTES)

    def verify(self) -> None:
        """Raise :class:`BadSignature` unless the publisher signed these bytes."""
        if not verify_ed25519(
            self.manifest.publisher, self.signature, RELEASE_DOMAIN + self.manifest_bytes
        ):
            raise BadSignature(
                f"the signature of {self.manifest.label()} does not verify: expected an "
                f"ed25519 signature by its publisher {self.manifest.publisher.hex()} over "
                "its manifest (tampered with, or signed by another key)"
            )


def decode_release(data: bytes) -> SignedRelease:
    """Strictly decode a release file's bytes (the signature is not checked).

    Raises :class:`MalformedRelease` for anything that is not a release.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedRelease(f"a release is bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_RELEASE_BYTES:
        raise MalformedRelease(
            f"not a release manifest: {len(data)} bytes, over the limit of {MAX_RELEASE_BYTES}"
        )
    try:
        frame = decode_frame(data, {_SIGNED_TAG: _SignedFrame}, max_size=MAX_RELEASE_BYTES)
        manifest = decode_frame(
            frame.manifest, {_MANIFEST_TAG: Manifest}, max_size=MAX_RELEASE_BYTES
        )
    except RemoteProtocolError as e:
        raise MalformedRelease(f"not a release manifest: {e.reason}") from None
    return SignedRelease(
        manifest=manifest, manifest_bytes=frame.manifest, signature=frame.signature
    )


def open_release(data: bytes) -> SignedRelease:
    """Decode a release and check its signature (not whether its publisher is trusted:
    that is :class:`~p2pnode.release.trust.TrustStore`'s job)."""
    release = decode_release(data)
    release.verify()
    return release


def read_release(path: Path) -> SignedRelease:
    """:func:`open_release` of the file at ``path`` (read only up to the size limit)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RELEASE_BYTES + 1)
    except OSError as e:
        raise MalformedRelease(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return open_release(data)
    except ReleaseError as e:
        raise type(e)(f"{path}: {e}") from None


def build_manifest(
    directory: Path,
    *,
    name: str,
    version: int,
    content_address: str,
    dtype: str,
    golden: Sequence[GoldenOutput],
    publisher: bytes,
    created_at: int,
    expires_at: int,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
) -> Manifest:
    """The manifest of the files in ``directory``, hashed chunk by chunk as they stream.

    ``content_address`` and ``dtype`` come from :mod:`p2pnode.release.weights` (the
    publish command computes them from the same directory); ``progress(n)`` hears of
    every chunk hashed. Raises :class:`MalformedRelease` for a directory or a value that
    cannot make a release.
    """
    entries = []
    for rel, path in release_files(directory):
        size, hashes = chunk_hashes(path, chunk_size, progress)
        entries.append(FileEntry(path=rel, size=size, chunk_hashes=hashes))
    try:
        return Manifest(
            name=name,
            version=version,
            content_address=content_address,
            dtype=dtype,
            chunk_size=chunk_size,
            files=tuple(entries),
            created_at=created_at,
            expires_at=expires_at,
            golden=tuple(golden),
            publisher=publisher,
        )
    except LocalProtocolError as e:
        raise MalformedRelease(f"cannot make a release manifest: {e}") from None


def check_chunk(manifest: Manifest, path: str, index: int, data: bytes) -> None:
    """Raise :class:`ChunkMismatch` unless ``data`` is chunk ``index`` of ``path`` in
    ``manifest`` (so a chunk of another release, or a corrupted one, is refused before
    it is written)."""
    entry = manifest.file(path)
    if entry is None:
        raise ChunkMismatch(f"{path!r} is not a file of {manifest.label()}")
    if not 0 <= index < entry.chunks:
        raise ChunkMismatch(
            f"{path} has {entry.chunks} chunks in {manifest.label()}: there is no chunk {index}"
        )
    want_len = min(manifest.chunk_size, entry.size - index * manifest.chunk_size)
    if len(data) != want_len:
        raise ChunkMismatch(
            f"chunk {index} of {path} is {len(data)} bytes; {manifest.label()} expects {want_len}"
        )
    got, want = hashlib.sha256(data).digest(), entry.chunk_hash(index)
    if got != want:
        raise ChunkMismatch(
            f"chunk {index} of {path} has sha256 {got.hex()[:16]}…; {manifest.label()} "
            f"expects {want.hex()[:16]}… (a chunk of another release, or corrupted)"
        )


def check_directory(
    manifest: Manifest, directory: Path, *, progress: Progress | None = None
) -> LoadedModel:
    """Check that ``directory`` holds exactly the release: the manifest's files, sizes
    and chunk hashes, and the content address it claims, computed from those bytes by
    the serving loader. Returns the model so loaded (a node can serve it as is).

    Raises :class:`ContentMismatch` naming the first difference: a file missing or extra,
    a size, a chunk, or an address (the files of one release under the address of
    another: mix-and-match).
    """
    from p2pnode.release.weights import load_fresh

    try:
        present = dict(release_files(directory))
    except MalformedRelease as e:
        raise ContentMismatch(f"{directory} does not hold {manifest.label()}: {e}") from None
    listed = {f.path for f in manifest.files}
    missing, extra = sorted(listed - present.keys()), sorted(present.keys() - listed)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:5]))
        if extra:
            parts.append("not in the release: " + ", ".join(extra[:5]))
        raise ContentMismatch(
            f"{directory} does not hold the files of {manifest.label()}: " + "; ".join(parts)
        )
    for f in manifest.files:
        size = present[f.path].stat().st_size
        if size != f.size:
            raise ContentMismatch(
                f"{f.path} in {directory} is {size} bytes; {manifest.label()} lists {f.size}"
            )
    for f in manifest.files:
        _, hashes = chunk_hashes(present[f.path], manifest.chunk_size, progress)
        for i in range(max(f.chunks, len(hashes) // _DIGEST)):
            if hashes[i * _DIGEST : (i + 1) * _DIGEST] != f.chunk_hash(i):
                raise ContentMismatch(
                    f"chunk {i} of {f.path} in {directory} is not the one "
                    f"{manifest.label()} lists (a file of another release, or corrupted)"
                )
    try:
        loaded = load_fresh(directory)
    except MalformedRelease as e:
        raise ContentMismatch(f"{manifest.label()}: {e}") from None
    if loaded.model_id != manifest.content_address:
        raise ContentMismatch(
            f"the files of {manifest.label()} make the model {loaded.model_id}, but the "
            f"manifest claims {manifest.content_address} (files and address of different "
            "releases?)"
        )
    return loaded
