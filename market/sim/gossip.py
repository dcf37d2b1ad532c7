"""RFQ dissemination over model-sharded gossip topics, with a bounded reach.

A naive design puts every RFQ for a model on one topic, so every provider of that
model hears every job: messages per job grow with N. Hearth shards instead:

* topic ``hearth/rfq/<model_id>/<shard>``; a provider holding model *m* subscribes
  to exactly one shard of *m*: ``shard = shard_key(provider) mod S_m``, where
  ``S_m = max(1, holders_m // shard_size)``. Every shard therefore holds between
  ``shard_size`` and ``2·shard_size`` providers, whatever N is;
* a buyer publishes each RFQ round on one shard (round 1: a random one; round r:
  the next one), so one round reaches a bounded candidate set, and a job that finds
  everybody busy moves on to fresh candidates;
* inside a shard, GossipSub keeps a mesh of degree ``degree``: the RFQ enters at one
  member and floods the mesh; member *j* hears it after ``1 + hops(entry, j)`` link
  delays. Every member forwards to its mesh peers except the one it heard it from,
  so one publish costs ``1 + Σ (deg(j) − 1)`` transmissions — bounded by
  ``2·shard_size·degree``, independent of N. That is why messages per job stay flat.

Meshes are drawn once from the seed; a crashed or frozen member simply does not
answer (real GossipSub repairs the mesh at its next heartbeat — not modelled).
"""

from __future__ import annotations

import random
from collections import deque

__all__ = ["ShardedGossip"]


class ShardedGossip:
    """Topic membership, meshes and hop counts for every (model, shard)."""

    def __init__(
        self,
        rng: random.Random,
        holders: list[list[int]],
        shard_keys: list[int],
        *,
        shard_size: int = 12,
        degree: int = 6,
    ) -> None:
        if shard_size < 1 or degree < 1:
            raise ValueError("shard_size and degree must be >= 1")
        self.shard_size = shard_size
        self.degree = degree
        self.shards: list[list[list[int]]] = []  # model → shard → provider indices
        self._mesh: dict[tuple[int, int], list[list[int]]] = {}
        self._hops: dict[tuple[int, int, int], list[int]] = {}
        self._tx: dict[tuple[int, int], int] = {}
        self._rng = rng
        for members in holders:
            n_shards = max(1, len(members) // shard_size)
            shards: list[list[int]] = [[] for _ in range(n_shards)]
            for p in members:
                shards[shard_keys[p] % n_shards].append(p)
            self.shards.append(shards)

    def n_shards(self, model: int) -> int:
        return len(self.shards[model])

    def members(self, model: int, shard: int) -> list[int]:
        return self.shards[model][shard]

    def _mesh_of(self, model: int, shard: int) -> list[list[int]]:
        key = (model, shard)
        mesh = self._mesh.get(key)
        if mesh is None:
            n = len(self.shards[model][shard])
            adj: list[set[int]] = [set() for _ in range(n)]
            d = min(self.degree, n - 1)
            for i in range(n):
                # a ring keeps the mesh connected; random links bring the degree up to d
                if n > 1:
                    adj[i].add((i + 1) % n)
                    adj[(i + 1) % n].add(i)
                while len(adj[i]) < d:
                    j = self._rng.randrange(n)
                    if j != i:
                        adj[i].add(j)
                        adj[j].add(i)
            mesh = [sorted(s) for s in adj]
            self._mesh[key] = mesh
            self._tx[key] = 1 + sum(max(len(s) - 1, 0) for s in mesh)
        return mesh

    def transmissions(self, model: int, shard: int) -> int:
        """Gossip transmissions one publish on this shard costs."""
        self._mesh_of(model, shard)
        return self._tx[(model, shard)]

    def hops(self, model: int, shard: int, entry: int) -> list[int]:
        """Mesh hop count from member ``entry`` to each member (BFS, cached)."""
        key = (model, shard, entry)
        h = self._hops.get(key)
        if h is None:
            mesh = self._mesh_of(model, shard)
            h = [-1] * len(mesh)
            h[entry] = 0
            q = deque([entry])
            while q:
                i = q.popleft()
                for j in mesh[i]:
                    if h[j] < 0:
                        h[j] = h[i] + 1
                        q.append(j)
            self._hops[key] = h
        return h
