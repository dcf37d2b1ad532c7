"""The simulator: fixed seeds, one random seed (printed), determinism, the checker
catching deliberately injected bugs, flat messages per job, and the CLI."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from typer.testing import CliRunner

from market.sim import InvariantChecker, SimConfig, run
from market.sim.gossip import ShardedGossip


def faulty(seed: int, **kw: Any) -> SimConfig:
    base: dict[str, Any] = dict(
        providers=300,
        jobs=2000,
        seed=seed,
        crash_rate=0.1,
        freeze_rate=0.05,
        loss=0.01,
        partitions=1,
    )
    base.update(kw)
    return SimConfig(**base)


def assert_healthy(cfg: SimConfig) -> dict[str, Any]:
    r = run(cfg)
    j = r.as_json()
    assert j["invariant_violations"] == 0, f"{j['violation']} — reproduce: {cfg.command()}"
    assert j["jobs"] == cfg.jobs, cfg.command()  # every job ended
    assert j["jobs_lost"] == 0, cfg.command()
    assert j["jobs_completed"] >= 0.95 * cfg.jobs, (j, cfg.command())
    assert j["crashes"] == round(0.1 * cfg.providers) and j["freezes"] == round(
        0.05 * cfg.providers
    )
    assert j["tokens"] > 0 and j["award_ms"]["p50"] > 0
    return j


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fixed_seeds_under_faults(seed: int) -> None:
    assert_healthy(faulty(seed))


def test_random_seed_under_faults() -> None:
    seed = random.SystemRandom().randrange(2**31)
    cfg = faulty(seed)
    print(f"random simulator seed {seed}; reproduce with: {cfg.command()}")
    assert_healthy(cfg)


def test_same_seed_same_run() -> None:
    a = run(faulty(11, jobs=300)).as_json()
    b = run(faulty(11, jobs=300)).as_json()
    for volatile in ("wall_s", "events_per_s"):
        a.pop(volatile)
        b.pop(volatile)
    assert a == b
    c = run(faulty(12, jobs=300)).as_json()
    assert c["events"] != a["events"] or c["award_ms"] != a["award_ms"]


@pytest.mark.parametrize(
    ("inject", "invariant"),
    [("overpay", "pay_at_most_delivered"), ("lose_outcome", "job_ends")],
)
def test_checker_catches_an_injected_bug_and_prints_the_repro(inject: str, invariant: str) -> None:
    cfg = SimConfig(providers=40, jobs=60, seed=5, inject=inject)
    r = run(cfg)
    assert len(r.violations) == 1 and r.violations[0].invariant == invariant
    j = r.as_json()
    assert j["repro"] == cfg.command() and f"--inject={inject}" in j["repro"]
    from p2pnode.cli.app import app

    args = j["repro"].split()[1:]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout.splitlines()[0])["violation"]["invariant"] == invariant
    assert "reproduce with: hearth sim" in res.output


def test_checker_flags_tokens_from_a_provider_that_was_not_awarded() -> None:
    c = InvariantChecker()
    job = bytes(16)
    c.job_started(job)
    c.awarded(job, "PA", 100, 0)
    c.delivered(job, "PA", 0, 8)
    assert not c.violations
    c.delivered(job, "PB", 8, 8)
    assert [v.invariant for v in c.violations] == ["one_active_provider"]
    c.provider_credit(job, 2, 1)
    assert c.violations[-1].invariant == "paid_within_credit"
    c.wallet("B", 100, 60, 50, 60)
    assert c.violations[-1].invariant == "funds_conserved"


def test_shards_stay_bounded_as_the_network_grows() -> None:
    rng = random.Random(0)
    for n in (50, 500, 5000, 20000):
        g = ShardedGossip(
            rng, [list(range(n))], [rng.getrandbits(32) for _ in range(n)], shard_size=12
        )
        sizes = [len(g.members(0, s)) for s in range(g.n_shards(0))]
        assert sum(sizes) == n
        if n >= 500:
            assert max(sizes) <= 2 * 12 + 12  # hash spread around the target
        assert all(
            g.transmissions(0, s) <= 1 + len(g.members(0, s)) * 12
            for s in range(min(5, g.n_shards(0)))
        )


def test_messages_per_job_stay_flat() -> None:
    small = run(SimConfig(providers=100, jobs=300, seed=3)).as_json()
    big = run(SimConfig(providers=2000, jobs=1500, seed=3)).as_json()
    assert small["invariant_violations"] == big["invariant_violations"] == 0
    assert big["messages_per_job"] <= 1.5 * small["messages_per_job"], (small, big)


def test_cli_json_and_bad_input() -> None:
    from p2pnode.cli.app import app

    res = CliRunner().invoke(
        app, ["sim", "--providers", "30", "--jobs", "40", "--seed", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    for key in (
        "jobs_completed",
        "jobs_failed",
        "invariant_violations",
        "messages_per_job",
        "failovers",
        "events_per_s",
        "wall_s",
    ):
        assert key in j
    assert set(j["award_ms"]) == {"p50", "p95"} and j["jobs"] == 40
    bad = CliRunner().invoke(app, ["sim", "--loss", "3"])
    assert bad.exit_code == 2 and "must be within" in bad.output and "Traceback" not in bad.output
    table = CliRunner().invoke(app, ["sim", "--providers", "20", "--jobs", "20"])
    assert table.exit_code == 0 and "invariant violations" in table.output
