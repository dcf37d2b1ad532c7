"""Model releases: signed, versioned manifests of a model's files, and the trust store.

A publisher signs one :class:`Manifest` per version of a model (its files and their
1 MiB chunk hashes, its content address, dtype, expiry and golden outputs); a node
trusts the publishers its config lists and keeps the last release it trusted of each
model, refusing rollbacks, expired releases, unknown publishers, bad signatures, a
version signed twice and chunks or directories that are not the release's::

    from p2pnode.release import TrustStore, check_chunk, read_release

    release = read_release(Path("smol/smol-v2.hearth-release"))   # decoded, signature checked
    with TrustStore(data_dir / TRUST_STORE_FILE, trusted=[publisher_hex]) as store:
        store.accept(release.encode(), directory=Path("smol"))     # or a typed ReleaseError
    check_chunk(release.manifest, "model.safetensors", 3, data)   # before writing a chunk

Modules: :mod:`.manifest` (the manifest, its encoding, signature and checks),
:mod:`.files` (which files a release holds, chunk hashing), :mod:`.weights` (content
address and dtype of a directory), :mod:`.golden` (golden outputs and the engine
check), :mod:`.trust` (the trust store), :mod:`.keys` (publisher key files) and
:mod:`.errors`. Fetching releases from peers and switching a node to a new version
build on these and are not here yet.
"""

from p2pnode.release.errors import (
    BadSignature,
    ChunkMismatch,
    ConflictingRelease,
    ContentMismatch,
    ExpiredRelease,
    GoldenMismatch,
    MalformedRelease,
    ReleaseError,
    Rollback,
    UnknownPublisher,
)
from p2pnode.release.files import RELEASE_SUFFIX, release_files
from p2pnode.release.golden import GOLDEN_PROMPTS, GREEDY_GAP, check_golden, compute_golden
from p2pnode.release.keys import new_key_file, parse_publisher_key, read_key_file
from p2pnode.release.manifest import (
    CHUNK_SIZE,
    MAX_RELEASE_BYTES,
    NAME_PATTERN,
    RELEASE_DOMAIN,
    FileEntry,
    GoldenOutput,
    Manifest,
    SignedRelease,
    build_manifest,
    check_chunk,
    check_directory,
    decode_release,
    open_release,
    read_release,
)
from p2pnode.release.trust import TRUST_STORE_FILE, TrustedRelease, TrustStore
from p2pnode.release.weights import load_fresh, stored_dtype

__all__ = [
    "CHUNK_SIZE",
    "GOLDEN_PROMPTS",
    "GREEDY_GAP",
    "MAX_RELEASE_BYTES",
    "NAME_PATTERN",
    "RELEASE_DOMAIN",
    "RELEASE_SUFFIX",
    "TRUST_STORE_FILE",
    "BadSignature",
    "ChunkMismatch",
    "ConflictingRelease",
    "ContentMismatch",
    "ExpiredRelease",
    "FileEntry",
    "GoldenMismatch",
    "GoldenOutput",
    "MalformedRelease",
    "Manifest",
    "ReleaseError",
    "Rollback",
    "SignedRelease",
    "TrustStore",
    "TrustedRelease",
    "UnknownPublisher",
    "build_manifest",
    "check_chunk",
    "check_directory",
    "check_golden",
    "compute_golden",
    "decode_release",
    "load_fresh",
    "new_key_file",
    "open_release",
    "parse_publisher_key",
    "read_key_file",
    "read_release",
    "release_files",
    "stored_dtype",
]
