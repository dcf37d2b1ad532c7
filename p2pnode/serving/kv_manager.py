"""KV-cache manager: hands out cache slots and fixed-size blocks. Never touches torch.

Layout (chosen for the CPU, where gathering a paged cache every step costs more than
the attention itself): the runner preallocates one contiguous region per *slot*,
``[slots, n_kv, max_len, hd]`` per layer, so a batch of decodes attends over a
zero-copy slice of it. Inside a slot, the cache is cut into blocks of ``block_size``
positions; physical block ``b`` is positions ``(b % blocks_per_slot) * block_size ...``
of slot ``b // blocks_per_slot``. A sequence's block table is therefore always the
run of blocks at the start of its slot.

What makes it a *budget* rather than a fixed partition is ``num_blocks``: the total
number of blocks that may be in use at once, usually far fewer than
``slots * blocks_per_slot``. On the CPU, pages of the slot region that no sequence has
touched are never backed by memory, so the budget is what bounds real memory; on CUDA
the runner sizes ``slots * max_len`` to the free memory instead. When the budget runs
out the scheduler preempts a sequence, which returns all its blocks.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

__all__ = ["KVManager", "SlotAllocation"]


@dataclass(slots=True)
class SlotAllocation:
    """The slot and number of blocks one sequence holds."""

    slot: int
    blocks: int = 0


@dataclass(slots=True)
class KVManager:
    """Slot and block bookkeeping for the per-slot cache described above."""

    slots: int
    max_len: int
    block_size: int
    num_blocks: int
    _free_slots: list[int] = field(default_factory=list)
    _held: dict[str, SlotAllocation] = field(default_factory=dict)
    _blocks_used: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1 or self.block_size < 1 or self.num_blocks < 1:
            raise ValueError("slots, block_size and num_blocks must be positive")
        if self.max_len % self.block_size:
            raise ValueError("max_len must be a multiple of block_size")
        self._free_slots = list(range(self.slots))
        heapq.heapify(self._free_slots)

    @property
    def blocks_per_slot(self) -> int:
        return self.max_len // self.block_size

    @property
    def free_blocks(self) -> int:
        return self.num_blocks - self._blocks_used

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` positions."""
        return -(-tokens // self.block_size)

    def holds(self, seq_id: str) -> bool:
        return seq_id in self._held

    def slot_of(self, seq_id: str) -> int:
        return self._held[seq_id].slot

    def block_table(self, seq_id: str) -> list[int]:
        """Physical block ids of ``seq_id``, in position order."""
        a = self._held[seq_id]
        base = a.slot * self.blocks_per_slot
        return list(range(base, base + a.blocks))

    def can_admit(self, tokens: int) -> bool:
        """Whether a new sequence needing ``tokens`` positions now could start."""
        return bool(self._free_slots) and self.blocks_for(tokens) <= self.free_blocks

    def admit(self, seq_id: str, tokens: int) -> int:
        """Give ``seq_id`` the lowest free slot and blocks for ``tokens``; return the slot.

        The lowest slot is chosen so that busy slots stay packed at the bottom and the
        runner's decode slice ``cache[:S]`` stays short.
        """
        if seq_id in self._held:
            raise ValueError(f"{seq_id} already holds a slot")
        if not self.can_admit(tokens):
            raise MemoryError("no free slot or blocks")
        slot = heapq.heappop(self._free_slots)
        self._held[seq_id] = SlotAllocation(slot=slot)
        self.grow(seq_id, tokens)
        return slot

    def grow(self, seq_id: str, tokens: int) -> bool:
        """Make ``seq_id`` hold at least ``tokens`` positions; False if the budget is out."""
        if tokens > self.max_len:
            return False
        a = self._held[seq_id]
        need = self.blocks_for(tokens) - a.blocks
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        a.blocks += need
        self._blocks_used += need
        return True

    def release(self, seq_id: str) -> None:
        """Return the slot and every block of ``seq_id`` (no-op if it holds none)."""
        a = self._held.pop(seq_id, None)
        if a is None:
            return
        self._blocks_used -= a.blocks
        heapq.heappush(self._free_slots, a.slot)
