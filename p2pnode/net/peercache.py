"""A small persisted list of peers we have talked to, so a node rejoins without bootstraps.

The cache is one JSON file, written atomically (temp file + rename)::

    {"version": 1, "peers": {"12D3Koo…": {"addrs": ["/ip4/…/tcp/…"], "last_seen": 1700000000.0}}}

Only the ``max_peers`` most recently seen peers are kept. A corrupt or foreign file is
ignored (and overwritten on the next save): the cache is a hint, never a source of truth.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PeerCache"]

logger = logging.getLogger(__name__)


@dataclass
class PeerCache:
    """Peers (peer id → addresses, last seen) loaded from and saved to ``path``."""

    path: Path
    max_peers: int = 200
    peers: dict[str, tuple[list[str], float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, max_peers: int = 200) -> PeerCache:
        """Read the cache; a missing or corrupt file gives an empty cache."""
        cache = cls(path=path, max_peers=max_peers)
        try:
            raw = json.loads(path.read_text())
            for pid, entry in raw.get("peers", {}).items():
                addrs = [a for a in entry.get("addrs", []) if isinstance(a, str)]
                seen = float(entry.get("last_seen", 0.0))
                if isinstance(pid, str) and addrs:
                    cache.peers[pid] = (addrs, seen)
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError, OSError) as e:
            logger.warning("ignoring unreadable peer cache %s: %r", path, e)
        return cache

    def remember(self, peer_id: str, addrs: list[str], when: float | None = None) -> None:
        """Record that ``peer_id`` was reachable at ``addrs`` (circuit addresses kept too).

        The entry is replaced, never merged: a node that moved (new port, new IP) must
        not keep its dead address in front of the live one across our restarts.
        """
        if addrs:
            self.peers[peer_id] = (sorted(set(addrs)), time.time() if when is None else when)

    def most_recent(self, limit: int | None = None) -> list[tuple[str, list[str]]]:
        """Peers, most recently seen first."""
        ordered = sorted(self.peers.items(), key=lambda kv: kv[1][1], reverse=True)
        return [(pid, addrs) for pid, (addrs, _) in ordered[: limit or self.max_peers]]

    def save(self) -> None:
        """Write the newest ``max_peers`` entries atomically."""
        keep = sorted(self.peers.items(), key=lambda kv: kv[1][1], reverse=True)
        doc = {
            "version": 1,
            "peers": {
                pid: {"addrs": addrs, "last_seen": seen}
                for pid, (addrs, seen) in keep[: self.max_peers]
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
