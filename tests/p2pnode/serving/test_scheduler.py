"""The scheduler and the torch-free parts of the engine, without a model or torch."""

from __future__ import annotations

import subprocess
import sys

from p2pnode.serving.kv_manager import KVManager
from p2pnode.serving.scheduler import Scheduler, SeqState


def _sched(*, slots: int = 4, num_blocks: int = 16, budget: int = 64) -> Scheduler:
    kv = KVManager(slots=slots, max_len=64, block_size=4, num_blocks=num_blocks)
    return Scheduler(kv, max_batch=slots, max_step_tokens=budget)


def _step(s: Scheduler) -> list[str]:
    """One step where every sampling chunk samples token 7; returns the ids that ran."""
    chunks = s.schedule()
    s.update({c.seq_id: 7 for c in chunks if c.sample})
    return [c.seq_id for c in chunks]


def test_a_paused_sequence_is_not_scheduled_and_keeps_its_cache() -> None:
    s = _sched()
    s.add(SeqState("a", [1, 2, 3], max_new_tokens=50))
    s.add(SeqState("b", [4, 5], max_new_tokens=50))
    assert _step(s) == ["a", "b"]
    assert s.pause("a") and not s.pause("nobody")
    held = s.kv.block_table("a")
    for _ in range(5):
        assert _step(s) == ["b"]
    a = s.get("a")
    assert a is not None and len(a.output_ids) == 1 and s.kv.block_table("a") == held
    assert s.resume("a")
    assert _step(s) == ["a", "b"]
    assert len(a.output_ids) == 2 and a.num_computed == 4  # went on where it stopped


def test_only_paused_sequences_means_no_work() -> None:
    s = _sched()
    s.add(SeqState("a", [1, 2, 3], max_new_tokens=50))
    s.pause("a")
    assert not s.has_work and s.schedule() == []  # waiting and paused: not admitted
    s.resume("a")
    assert s.has_work and _step(s) == ["a"]


def test_admission_passes_over_a_paused_waiting_sequence() -> None:
    s = _sched()
    for sid in "abc":
        s.add(SeqState(sid, [1, 2], max_new_tokens=50))
    s.pause("a")
    assert _step(s) == ["b", "c"]
    s.resume("a")
    assert _step(s) == ["b", "c", "a"]


def test_a_paused_sequence_is_preempted_first_and_recomputed_on_resume() -> None:
    s = _sched(num_blocks=4)  # 16 positions in all
    s.add(SeqState("p", [1] * 4, max_new_tokens=50))
    s.add(SeqState("r", [2] * 4, max_new_tokens=50))
    s.add(SeqState("q", [3] * 3, max_new_tokens=50))
    assert _step(s) == ["p", "r", "q"]  # 3 blocks used
    s.pause("p")  # p is not the latest admitted, yet it is the victim
    for _ in range(8):
        _step(s)
    p, q, r = s.get("p"), s.get("q"), s.get("r")
    assert p is not None and q is not None and r is not None
    assert s.total_preemptions >= 1 and p.preemptions >= 1 and not s.kv.holds("p")
    assert r.preemptions == 0 and p in s.waiting
    s.abort("r")
    s.abort("q")
    s.resume("p")
    assert _step(s) == ["p"] and p.num_computed == 5  # prompt + its token, recomputed


def test_scheduler_and_request_side_import_without_torch() -> None:
    code = (
        "import p2pnode.serving.scheduler, p2pnode.serving.input_processor, "
        "p2pnode.serving.output_processor, p2pnode.serving.request, p2pnode.serving.bridge, "
        "p2pnode.serving.intake, "
        "p2pnode.serving, sys\n"
        "from p2pnode.serving import GenerationRequest, BadRequestError\n"
        'assert "torch" not in sys.modules, "torch was imported"\n'
        "from p2pnode.serving import Engine, EngineStats, load_model, cpu_attention\n"
        'assert "torch" in sys.modules\n'
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
