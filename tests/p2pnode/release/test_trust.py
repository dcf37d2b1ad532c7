"""The trust store: each refusal with its error and nothing stored; newer versions replace
older ones; what it knows survives a restart."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from market.protocol import SigningKey
from p2pnode.release import (
    RELEASE_DOMAIN,
    TRUST_STORE_FILE,
    BadSignature,
    ConflictingRelease,
    ContentMismatch,
    ExpiredRelease,
    MalformedRelease,
    ReleaseError,
    Rollback,
    SignedRelease,
    TrustStore,
    UnknownPublisher,
)
from tests.p2pnode.release.factory import (
    DAY,
    NOW,
    TREE,
    ModelDirs,
    file_tree,
    key,
    release_of,
)


@dataclass
class World:
    """Two releases' file trees, the keys, and a store that trusts ``publisher``."""

    a: Path  # the files of one release
    b: Path  # the files of another, same names and sizes
    publisher: SigningKey
    stranger: SigningKey
    path: Path

    def store(self) -> TrustStore:
        return TrustStore(self.path, trusted=[self.publisher.public_bytes.hex()])

    def release(self, version: int, folder: Path | None = None, **kw: object) -> SignedRelease:
        return release_of(folder or self.a, self.publisher, version, **kw)  # type: ignore[arg-type]


@pytest.fixture
def world(tmp_path: Path, publisher: SigningKey, stranger: SigningKey) -> World:
    return World(
        a=file_tree(tmp_path / "a", 1, TREE),
        b=file_tree(tmp_path / "b", 2, TREE),
        publisher=publisher,
        stranger=stranger,
        path=tmp_path / TRUST_STORE_FILE,
    )


def _resigned(release: SignedRelease, signer: SigningKey, **change: object) -> SignedRelease:
    """``release`` with fields changed and signed by ``signer`` whatever its publisher says."""
    manifest = dataclasses.replace(release.manifest, **change)  # type: ignore[arg-type]
    body = manifest.encode()
    return SignedRelease(
        manifest=manifest, manifest_bytes=body, signature=signer.sign(RELEASE_DOMAIN + body)
    )


def _kept(store: TrustStore) -> list[tuple[str, int, str]]:
    return [
        (t.release.manifest.name, t.release.manifest.version, t.release.digest)
        for t in store.releases()
    ]


# Each attack: what the store trusts before (versions of release a), the bytes offered
# (and the folder they are checked against), the error and what its message says.
Offer = Callable[[World], tuple[bytes, Path | None]]
REFUSALS: list[tuple[str, tuple[int, ...], Offer, type[ReleaseError], str]] = [
    (
        "unknown publisher",
        (),
        lambda w: (release_of(w.a, w.stranger, 1).encode(), None),
        UnknownPublisher,
        "which is not a trusted publisher: expected one of the keys this node trusts",
    ),
    (
        "bad signature (a bit flipped)",
        (),
        lambda w: (
            dataclasses.replace(
                w.release(1),
                signature=bytes([w.release(1).signature[0] ^ 1]) + w.release(1).signature[1:],
            ).encode(),
            None,
        ),
        BadSignature,
        "does not verify: expected an ed25519 signature by its publisher",
    ),
    (
        "bad signature (manifest edited after signing)",
        (),
        lambda w: (
            dataclasses.replace(
                w.release(1),
                manifest_bytes=dataclasses.replace(w.release(1).manifest, version=7).encode(),
            ).encode(),
            None,
        ),
        BadSignature,
        "signature of smol v7 does not verify",
    ),
    (
        "bad signature (a stranger signs in the publisher's name)",
        (),
        lambda w: (_resigned(w.release(1), w.stranger).encode(), None),
        BadSignature,
        "does not verify",
    ),
    (
        "expired manifest",
        (),
        lambda w: (w.release(1, expires_at=NOW - 1).encode(), None),
        ExpiredRelease,
        "smol v1 expired at 2027-01-15 07:59:59 UTC; now is 2027-01-15 08:00:00 UTC",
    ),
    (
        "manifest from the future",
        (),
        lambda w: (w.release(1, created_at=NOW + 3600, expires_at=NOW + DAY).encode(), None),
        ExpiredRelease,
        "in the future",
    ),
    (
        "rolled-back manifest",
        (1, 2),
        lambda w: (w.release(1).encode(), None),
        Rollback,
        "smol v1 is older than the trusted smol v2: expected version 2 or above",
    ),
    (
        "same version, different content (freeze / mix)",
        (1, 2),
        lambda w: (w.release(2, folder=w.b).encode(), None),
        ConflictingRelease,
        "is not the smol v2 already trusted",
    ),
    (
        "same version, same files, other expiry",
        (2,),
        lambda w: (w.release(2, expires_at=NOW + 400 * DAY).encode(), None),
        ConflictingRelease,
        "a version is signed once",
    ),
    (
        "a manifest checked against another release's files",
        (),
        lambda w: (w.release(1).encode(), w.b),
        ContentMismatch,
        "chunk 0 of model.safetensors",
    ),
    (
        "a folder with a file the release does not list",
        (),
        lambda w: (w.release(1).encode(), _plus(w.a, "evil.py")),
        ContentMismatch,
        "not in the release: evil.py",
    ),
    (
        "a folder with a file no release can carry",
        (),
        lambda w: (w.release(1).encode(), _plus(w.a, "run me.sh")),
        ContentMismatch,
        "does not hold smol v1: 'run me.sh' cannot be part of a release",
    ),
    (
        "truncated bytes",
        (),
        lambda w: (w.release(1).encode()[:100], None),
        MalformedRelease,
        "not a release manifest",
    ),
]


def _plus(folder: Path, name: str) -> Path:
    copy = folder.with_name(folder.name + "-plus")
    shutil.copytree(folder, copy)
    (copy / name).write_text("import os")
    return copy


@pytest.mark.parametrize(
    ("case", "before", "offer", "error", "message"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_each_attack_is_refused_and_nothing_is_stored(
    world: World,
    case: str,
    before: tuple[int, ...],
    offer: Offer,
    error: type[ReleaseError],
    message: str,
) -> None:
    with world.store() as store:
        for v in before:
            store.accept(world.release(v).encode(), now=NOW)
        kept = _kept(store)
        data, folder = offer(world)
        with pytest.raises(error) as info:
            store.check(data, now=NOW, directory=folder)
        assert message in str(info.value), str(info.value)
        with pytest.raises(error):
            store.accept(data, now=NOW, directory=folder)
        assert _kept(store) == kept
    with world.store() as again:  # and after a restart
        assert _kept(again) == kept


def test_a_newer_version_replaces_the_older_one(world: World) -> None:
    with world.store() as store:
        assert store.latest(world.publisher.public_bytes, "smol") is None
        one = store.accept(world.release(1).encode(), now=NOW)
        assert store.latest(world.publisher.public_bytes, "smol") == one
        two = store.accept(world.release(2, folder=world.b).encode(), now=NOW)
        assert store.latest(world.publisher.public_bytes.hex(), "smol") == two
        assert _kept(store) == [("smol", 2, two.digest)]
        # The same release again is no change and no error.
        store.accept(two.encode(), now=NOW + 10)
        assert _kept(store) == [("smol", 2, two.digest)]
        assert store.releases()[0].accepted_at == NOW  # still the first acceptance


def test_check_alone_stores_nothing(world: World) -> None:
    with world.store() as store:
        store.check(world.release(1).encode(), now=NOW)
        assert _kept(store) == []


def test_models_and_publishers_are_tracked_apart(world: World) -> None:
    other = key(3)
    with TrustStore(world.path, trusted=[world.publisher.public_bytes, other.public_bytes]) as s:
        s.accept(world.release(5).encode(), now=NOW)
        s.accept(world.release(1, name="tiny").encode(), now=NOW)  # another model: its own line
        s.accept(release_of(world.a, other, 1).encode(), now=NOW)  # another publisher's smol
        assert sorted((n, v) for n, v, _ in _kept(s)) == [("smol", 1), ("smol", 5), ("tiny", 1)]
        with pytest.raises(Rollback):
            s.accept(world.release(4).encode(), now=NOW)


def test_what_was_trusted_survives_a_restart(world: World) -> None:
    with world.store() as store:
        two = store.accept(world.release(2).encode(), now=NOW)
    with world.store() as store:  # a fresh instance on the same file
        assert store.latest(world.publisher.public_bytes, "smol") == two
        with pytest.raises(Rollback, match="older than the trusted smol v2"):
            store.accept(world.release(1).encode(), now=NOW)
        with pytest.raises(ConflictingRelease):
            store.accept(world.release(2, folder=world.b).encode(), now=NOW)
        three = store.accept(world.release(3).encode(), now=NOW)
    with world.store() as store:
        assert store.latest(world.publisher.public_bytes, "smol") == three


def test_an_expired_trusted_release_still_blocks_a_rollback(world: World) -> None:
    with world.store() as store:
        store.accept(world.release(2, expires_at=NOW + 60).encode(), now=NOW)
        later = NOW + DAY  # v2 has expired; v1 has not
        with pytest.raises(Rollback):
            store.accept(world.release(1).encode(), now=later)
        store.accept(world.release(3).encode(), now=later)


def test_a_publisher_that_is_no_longer_trusted_is_refused(world: World) -> None:
    with world.store() as store:
        store.accept(world.release(1).encode(), now=NOW)
    with TrustStore(world.path, trusted=[]) as store:  # the config dropped the key
        with pytest.raises(UnknownPublisher, match=r"\(none\)"):
            store.accept(world.release(2).encode(), now=NOW)
        assert [v for _, v, _ in _kept(store)] == [1]


def test_trusted_publishers_must_be_keys(world: World) -> None:
    with pytest.raises(MalformedRelease, match="expected 64 hex digits"):
        TrustStore(world.path, trusted=["not-a-key"])


# ------------------------------------------------------------------ real model folders


def _model_release(
    models: ModelDirs, signer: SigningKey, folder: Path, address: str, v: int
) -> bytes:
    return release_of(folder, signer, v, address=address, chunk_size=1 << 20).encode()


def test_a_release_checked_against_its_folder_is_accepted(
    models: ModelDirs, publisher: SigningKey, tmp_path: Path
) -> None:
    data = _model_release(models, publisher, models.v1, models.address_v1, 1)
    with TrustStore(tmp_path / "t.sqlite", trusted=[publisher.public_bytes]) as store:
        release = store.accept(data, now=NOW, directory=models.v1)
        assert release.manifest.content_address == models.address_v1
        assert release.manifest.file("model.safetensors").chunks == 68  # type: ignore[union-attr]


MIXES = [
    # the embeddings (chunks 0-59) are the same in both: the first layer differs
    ("v1's manifest, v2's files", "v1", "address_v1", "v2", "chunk 60 of model.safetensors"),
    (
        "v2's files and chunk hashes under v1's content address",
        "v2",
        "address_v1",
        "v2",
        "the files of smol v1 make the model",
    ),
]


@pytest.mark.parametrize(
    ("case", "files", "address", "folder", "message"), MIXES, ids=[m[0] for m in MIXES]
)
def test_mix_and_match_of_two_releases_is_refused(
    models: ModelDirs,
    publisher: SigningKey,
    tmp_path: Path,
    case: str,
    files: str,
    address: str,
    folder: str,
    message: str,
) -> None:
    data = _model_release(models, publisher, getattr(models, files), getattr(models, address), 1)
    with TrustStore(tmp_path / "t.sqlite", trusted=[publisher.public_bytes]) as store:
        with pytest.raises(ContentMismatch, match=message):
            store.accept(data, now=NOW, directory=getattr(models, folder))
        assert store.releases() == []
        store.accept(data, now=NOW)  # the same bytes, not checked against a folder, pass
