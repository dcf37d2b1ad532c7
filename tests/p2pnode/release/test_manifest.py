"""Release manifests: canonical bytes, signatures, strict decoding, chunk and folder checks."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.protocol import SigningKey
from p2pnode.release import (
    CHUNK_SIZE,
    MAX_RELEASE_BYTES,
    RELEASE_DOMAIN,
    BadSignature,
    ChunkMismatch,
    FileEntry,
    MalformedRelease,
    Manifest,
    ReleaseError,
    SignedRelease,
    build_manifest,
    check_chunk,
    decode_release,
    open_release,
    read_release,
    release_files,
)
from p2pnode.release.files import LOADER_CACHE, chunk_hashes
from tests.p2pnode.release.factory import GOLDEN, NOW, TREE, file_tree, release_of


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return file_tree(tmp_path / "model", 7, TREE)


@pytest.fixture
def signed(tree: Path, publisher: SigningKey) -> SignedRelease:
    return release_of(tree, publisher, 1)


# ------------------------------------------------------------------ building and bytes


def test_the_manifest_lists_every_file_with_its_chunk_hashes(
    tree: Path, signed: SignedRelease
) -> None:
    m = signed.manifest
    assert [f.path for f in m.files] == ["model.safetensors", "sub/extra.bin", "tokenizer.json"]
    for f in m.files:
        data = (tree / f.path).read_bytes()
        assert f.size == len(data)
        pieces = [data[i : i + m.chunk_size] for i in range(0, len(data), m.chunk_size)]
        assert f.chunk_hashes == b"".join(hashlib.sha256(p).digest() for p in pieces)
    assert m.file("model.safetensors").chunks == 4  # type: ignore[union-attr]  # 3 full + 100 B
    assert m.total_size == sum(TREE.values()) and m.chunk_count == 4 + 1 + 1


def test_hashing_streams_one_chunk_at_a_time(tmp_path: Path) -> None:
    path = file_tree(tmp_path, 3, {"big.bin": 5 * 4096 + 1})
    seen: list[int] = []
    size, hashes = chunk_hashes(path / "big.bin", 4096, seen.append)
    assert size == 5 * 4096 + 1 and seen == [4096] * 5 + [1] and len(hashes) == 6 * 32
    assert (
        chunk_hashes((path / "big.bin"), CHUNK_SIZE)[1]
        == hashlib.sha256((path / "big.bin").read_bytes()).digest()
    )  # one short chunk: the whole file


def test_local_and_hidden_files_are_not_part_of_a_release(tree: Path) -> None:
    (tree / LOADER_CACHE).write_text("{}")
    (tree / "smol-v1.hearth-release").write_bytes(b"x")
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref")
    (tree / ".gitattributes").write_text("*")
    assert [rel for rel, _ in release_files(tree)] == [
        "model.safetensors",
        "sub/extra.bin",
        "tokenizer.json",
    ]


def test_the_loader_cache_name_is_the_loaders() -> None:
    from p2pnode.serving.loader import _MANIFEST_FILE

    assert LOADER_CACHE == _MANIFEST_FILE


@pytest.mark.parametrize("bad", ["my model.bin", "naïve.json", "a:b"])
def test_a_file_a_release_cannot_carry_is_named(tree: Path, bad: str) -> None:
    (tree / bad).write_bytes(b"1")
    with pytest.raises(MalformedRelease, match="cannot be part of a release"):
        release_files(tree)


def test_the_encoding_is_deterministic_and_round_trips(
    tree: Path, signed: SignedRelease, publisher: SigningKey
) -> None:
    again = release_of(tree, publisher, 1)
    assert again.encode() == signed.encode()  # same files, same fields: same bytes
    opened = open_release(signed.encode())
    assert opened == signed and opened.digest == signed.digest
    assert signed.manifest_bytes == signed.manifest.encode()


def test_the_signature_is_domain_separated(signed: SignedRelease, publisher: SigningKey) -> None:
    from market.protocol import verify_ed25519

    body = signed.manifest_bytes
    assert verify_ed25519(publisher.public_bytes, signed.signature, RELEASE_DOMAIN + body)
    assert not verify_ed25519(publisher.public_bytes, signed.signature, body)
    # The same key signing the bare bytes (as another protocol might) is not a release.
    bare = dataclasses.replace(signed, signature=publisher.sign(body))
    with pytest.raises(BadSignature, match="does not verify"):
        open_release(bare.encode())


def test_only_the_publisher_can_sign(signed: SignedRelease, stranger: SigningKey) -> None:
    with pytest.raises(ReleaseError, match="not this manifest's publisher"):
        signed.manifest.sign(stranger)


# ------------------------------------------------------------------ single chunks


def _chunk(tree: Path, path: str, index: int, size: int = 4096) -> bytes:
    return (tree / path).read_bytes()[index * size : (index + 1) * size]


def test_a_chunk_of_the_release_passes(tree: Path, signed: SignedRelease) -> None:
    for f in signed.manifest.files:
        for i in range(f.chunks):
            check_chunk(signed.manifest, f.path, i, _chunk(tree, f.path, i))


CHUNK_REFUSALS: list[tuple[str, Callable[[Path, Path], tuple[str, int, bytes]], str]] = [
    (
        "tampered",
        lambda t, o: (
            "model.safetensors",
            1,
            bytes([_chunk(t, "model.safetensors", 1)[0] ^ 1])
            + _chunk(t, "model.safetensors", 1)[1:],
        ),
        r"chunk 1 of model.safetensors has sha256 .* expects",
    ),
    (
        "another release's chunk at the same place",
        lambda t, o: ("model.safetensors", 2, _chunk(o, "model.safetensors", 2)),
        r"a chunk of another release, or corrupted",
    ),
    (
        "the right bytes at the wrong index",
        lambda t, o: ("model.safetensors", 0, _chunk(t, "model.safetensors", 1)),
        r"chunk 0 of model.safetensors has sha256",
    ),
    (
        "the right bytes under the wrong path",
        lambda t, o: ("sub/extra.bin", 0, _chunk(t, "tokenizer.json", 0)),
        r"chunk 0 of sub/extra.bin is 1000 bytes; smol v1 expects 4096",
    ),
    (
        "short",
        lambda t, o: ("model.safetensors", 0, _chunk(t, "model.safetensors", 0)[:-1]),
        r"is 4095 bytes; smol v1 expects 4096",
    ),
    (
        "past the end",
        lambda t, o: ("model.safetensors", 4, b"x"),
        r"has 4 chunks in smol v1: there is no chunk 4",
    ),
    ("unknown file", lambda t, o: ("evil.py", 0, b"x"), r"'evil.py' is not a file of smol v1"),
]


@pytest.mark.parametrize(
    ("case", "make", "message"), CHUNK_REFUSALS, ids=[c[0] for c in CHUNK_REFUSALS]
)
def test_a_wrong_chunk_is_refused(
    tmp_path: Path,
    tree: Path,
    signed: SignedRelease,
    case: str,
    make: Callable[[Path, Path], tuple[str, int, bytes]],
    message: str,
) -> None:
    other = file_tree(tmp_path / "other", 8, TREE)  # another release of the same shape
    path, index, data = make(tree, other)
    with pytest.raises(ChunkMismatch, match=message):
        check_chunk(signed.manifest, path, index, data)


# ------------------------------------------------------------------ strict decoding


def _frame(tag: str, body: dict[str, object]) -> bytes:
    return msgpack.packb([1, tag, 1, body], use_bin_type=True)  # type: ignore[no-any-return]


def _inner(signed: SignedRelease) -> dict[str, Any]:
    raw = msgpack.unpackb(signed.manifest_bytes, raw=False)
    return raw[3]  # type: ignore[no-any-return]


def _wrap(body: bytes, signer: SigningKey) -> bytes:
    return _frame("release", {"manifest": body, "signature": signer.sign(RELEASE_DOMAIN + body)})


MALFORMED: list[tuple[str, Callable[[SignedRelease, SigningKey], bytes], str]] = [
    ("empty", lambda s, k: b"", "undecodable msgpack"),
    ("truncated", lambda s, k: s.encode()[:-1], "undecodable msgpack"),
    ("trailing bytes", lambda s, k: s.encode() + b"\x00", "undecodable msgpack"),
    ("not msgpack", lambda s, k: b"\xc1" * 40, "undecodable msgpack"),
    (
        "oversized",
        lambda s, k: b"\x00" * (MAX_RELEASE_BYTES + 1),
        f"over the limit of {MAX_RELEASE_BYTES}",
    ),
    ("another frame type", lambda s, k: _frame("offer", {}), "unknown message type 'offer'"),
    (
        "signature of the wrong type",
        lambda s, k: _frame("release", {"manifest": s.manifest_bytes, "signature": "x" * 64}),
        "_SignedFrame.signature: expected bytes, got str",
    ),
    (
        "version as a string",
        lambda s, k: _wrap(_frame("release-manifest", {**_inner(s), "version": "1"}), k),
        "Manifest.version: expected int, got str",
    ),
    (
        "an unknown field",
        lambda s, k: _wrap(_frame("release-manifest", {**_inner(s), "extra": 1}), k),
        "unknown field",
    ),
    (
        "a missing field",
        lambda s, k: _wrap(
            _frame("release-manifest", {a: b for a, b in _inner(s).items() if a != "golden"}),
            k,
        ),
        "missing field",
    ),
    (
        "fields out of order (non-canonical)",
        lambda s, k: _wrap(_frame("release-manifest", dict(reversed(_inner(s).items()))), k),
        "non-canonical encoding of Manifest",
    ),
    (
        "a path that leaves the folder",
        lambda s, k: _wrap(_frame("release-manifest", _with_file(s, path="../../etc/passwd")), k),
        "does not match",
    ),
    (
        "an absolute path",
        lambda s, k: _wrap(_frame("release-manifest", _with_file(s, path="/etc/passwd")), k),
        "does not match",
    ),
    (
        "the loader's cache as a file",
        lambda s, k: _wrap(_frame("release-manifest", _with_file(s, path=LOADER_CACHE)), k),
        "local to a machine",
    ),
    (
        "a chunk count that does not fit the size",
        lambda s, k: _wrap(_frame("release-manifest", _with_file(s, size=10 * 4096)), k),
        "make 10 chunks of 4096, not 4",
    ),
    (
        "a torn chunk hash",
        lambda s, k: _wrap(_frame("release-manifest", _with_file(s, chunk_hashes=b"\x00" * 33)), k),
        "whole 32-byte sha256 digests",
    ),
    (
        "files out of order",
        lambda s, k: _wrap(
            _frame("release-manifest", {**_inner(s), "files": list(reversed(_inner(s)["files"]))}),
            k,
        ),
        "files must be sorted by path",
    ),
    (
        "a chunk size that is not a power of two",
        lambda s, k: _wrap(_frame("release-manifest", {**_inner(s), "chunk_size": 5000}), k),
        "not a power of two",
    ),
    (
        "expiring before it was made",
        lambda s, k: _wrap(_frame("release-manifest", {**_inner(s), "expires_at": NOW - 10**6}), k),
        "expires_at must be after created_at",
    ),
    (
        "too many golden outputs",
        lambda s, k: _wrap(
            _frame("release-manifest", {**_inner(s), "golden": [_inner(s)["golden"][0]] * 17}), k
        ),
        "17 items, expected between 1 and 16",
    ),
]


def _with_file(s: SignedRelease, **change: object) -> dict[str, object]:
    body = _inner(s)
    files = [dict(f) for f in body["files"]]
    files[0].update(change)
    return {**body, "files": files}


@pytest.mark.parametrize(("case", "make", "message"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_bytes_are_refused_with_a_reason(
    signed: SignedRelease,
    publisher: SigningKey,
    case: str,
    make: Callable[[SignedRelease, SigningKey], bytes],
    message: str,
) -> None:
    data = make(signed, publisher)
    with pytest.raises(MalformedRelease, match="not a release manifest") as info:
        decode_release(data)
    assert message in str(info.value), str(info.value)


def test_a_release_file_is_read_within_the_size_limit(
    tmp_path: Path, signed: SignedRelease
) -> None:
    good = tmp_path / "ok.hearth-release"
    good.write_bytes(signed.encode())
    assert read_release(good) == signed
    big = tmp_path / "big.hearth-release"
    with big.open("wb") as f:
        f.truncate(4 * MAX_RELEASE_BYTES)  # sparse: only the limit + 1 is ever read
    with pytest.raises(MalformedRelease, match=f"{big}: not a release manifest: .* over the limit"):
        read_release(big)
    with pytest.raises(MalformedRelease, match="cannot read"):
        read_release(tmp_path / "missing")


def test_building_a_manifest_with_a_bad_value_says_which(tree: Path, publisher: SigningKey) -> None:
    with pytest.raises(MalformedRelease, match=r"Manifest.name: .* does not match"):
        build_manifest(
            tree,
            name="../evil",
            version=1,
            content_address="sha256:" + "00" * 32,
            dtype="bfloat16",
            golden=GOLDEN,
            publisher=publisher.public_bytes,
            created_at=NOW,
            expires_at=NOW + 1,
        )


def test_a_manifest_rebuilt_from_its_own_fields_is_equal(signed: SignedRelease) -> None:
    m = signed.manifest
    fields = {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
    assert Manifest(**fields) == m
    files = tuple(FileEntry(path=f.path, size=f.size, chunk_hashes=f.chunk_hashes) for f in m.files)
    assert files == m.files


# ------------------------------------------------------------------ fuzzing


def _only_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedRelease):
        decode_release(data)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2048))
def test_random_bytes_only_ever_raise_malformed(data: bytes) -> None:
    _only_malformed(data)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_releases_only_ever_raise_malformed(
    data: st.DataObject, signed: SignedRelease, publisher: SigningKey
) -> None:
    """Flip, cut or insert bytes of a valid release, outside or inside a valid signature."""
    inner = data.draw(st.booleans(), label="mutate the signed manifest")
    raw = bytearray(signed.manifest_bytes if inner else signed.encode())
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        at = data.draw(st.integers(0, max(0, len(raw) - 1)), label="at")
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="kind")
        if kind == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255), label="bits")
        elif kind == "cut":
            del raw[at : at + data.draw(st.integers(1, 16), label="length")]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
    if inner:  # signed by the publisher: the manifest's own key may no longer be theirs
        with contextlib.suppress(MalformedRelease, BadSignature):
            open_release(_wrap(bytes(raw), publisher))
    else:
        _only_malformed(bytes(raw))
