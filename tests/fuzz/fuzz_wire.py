"""atheris (libFuzzer) target for the wire decoder and envelope opener.

The CI fuzz test (``tests/market/protocol/test_wire_fuzz.py``) runs ~120k seeded
cases; this target is for long, coverage-guided runs. The property is the same:
``decode`` and ``unseal`` either return or raise ``RemoteProtocolError``; any other
exception is a crash that libFuzzer saves as ``crash-<sha1>`` for reproduction.

Usage (atheris is not a project dependency; install it where you fuzz)::

    pip install atheris
    python tests/fuzz/fuzz_wire.py --make-corpus corpus/      # seed corpus of valid frames
    python tests/fuzz/fuzz_wire.py corpus/ -max_len=4096 -jobs=2 -timeout=5
    python tests/fuzz/fuzz_wire.py crash-<sha1>               # replay one input

Run from the repository root (so ``market`` and ``tests`` are importable).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

NOW_MS = 1_700_000_000_000


def make_corpus(folder: str, count: int = 500, seed: int = 1) -> None:
    """Write ``count`` valid message frames and envelopes into ``folder``."""
    from market.protocol import SigningKey, encode, seal
    from tests.market.protocol.wire_corpus import random_message

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    key = SigningKey.generate(rng.randbytes)
    for i in range(count):
        msg = random_message(rng)
        with open(os.path.join(folder, f"msg-{i:04d}"), "wb") as f:
            f.write(encode(msg))
        sealed = seal(msg, key=key, now_ms=NOW_MS, rng=rng.randbytes, ttl_ms=600_000)
        with open(os.path.join(folder, f"env-{i:04d}"), "wb") as f:
            f.write(sealed)


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--make-corpus":
        make_corpus(sys.argv[2])
        return

    import atheris

    with atheris.instrument_imports():
        from market.protocol import RemoteProtocolError, ReplayGuard, decode, unseal

    guard = ReplayGuard(max_entries=10_000)

    def test_one_input(data: bytes) -> None:
        with contextlib.suppress(RemoteProtocolError):
            decode(data)
        with contextlib.suppress(RemoteProtocolError):
            unseal(data, now_ms=NOW_MS + 1, replay_guard=guard)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
