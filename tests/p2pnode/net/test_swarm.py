"""Multi-process tests on loopback: discovery, gossip, RFQ sharding, trade round trip,
and a hostile process attacking every protocol while the swarm keeps serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from tests.p2pnode.net.conftest import MODEL_A, MODEL_B, Swarm, wait_until
from tests.p2pnode.net.scripted_peer import child_env


def test_peers_discover_each_other(swarm: Swarm) -> None:
    # every node meets other nodes (not only the bootstrap) through rendezvous
    def all_meshed() -> bool:
        for p in swarm.peers:
            others = set(p.call("info")["peers"]) - {swarm.boot.peer_id}
            if len(others) < 3:
                return False
        return True

    wait_until(all_meshed, 60)
    # providers are found by model, through DHT records and rendezvous
    ids_a = {p.peer_id for p in swarm.providers_a}
    ids_b = {p.peer_id for p in swarm.providers_b}
    found_a = wait_until(
        lambda: (f := set(swarm.buyers[0].call("find", model=MODEL_A)["providers"])) >= ids_a and f,
        60,
    )
    assert found_a == ids_a
    found_b = wait_until(
        lambda: (f := set(swarm.buyers[1].call("find", model=MODEL_B)["providers"])) >= ids_b and f,
        60,
    )
    assert found_b == ids_b


def test_offers_propagate_to_everyone(swarm: Swarm) -> None:
    wait_until(
        lambda: all(p.call("mesh", topic="/hearth/1/offers")["mesh"] >= 1 for p in swarm.peers), 60
    )
    providers = swarm.providers_a + swarm.providers_b
    for p in providers:
        p.call("publish_offer")
    want = {p.peer_id for p in providers}

    def everyone_has_them() -> bool:
        for p in swarm.peers:
            got = set(p.call("received")["offers"])
            if not (want - {p.peer_id}) <= got:
                return False
        return True

    wait_until(everyone_has_them, 30)


def test_rfq_reaches_exactly_the_providers_of_its_model(swarm: Swarm) -> None:
    buyer = swarm.buyers[2]
    job = os.urandom(16).hex()
    # the buyer joins the RFQ topic's providers first, as the SDK will (connect_providers)
    wait_until(lambda: len(buyer.call("find", model=MODEL_A)["providers"]) == 3, 60)
    buyer.call("connect_providers", model=MODEL_A)
    wait_until(lambda: buyer.call("mesh", topic=f"/hearth/1/rfq/{MODEL_A}")["peers"] >= 3, 30)
    buyer.call("publish_rfq", model=MODEL_A, job=job)
    wait_until(lambda: all(job in p.call("received")["rfqs"] for p in swarm.providers_a), 30)
    for p in swarm.providers_b + swarm.buyers:
        assert job not in p.call("received")["rfqs"]


def test_bid_award_stream_round_trip(swarm: Swarm) -> None:
    buyer = swarm.buyers[0]
    for provider in swarm.providers_a[:2]:
        r = buyer.call("trade", peer=provider.peer_id, model=MODEL_A, chunks=50)
        assert r["bid_price"] == 1000
        assert r["chunks"] == 50
        assert r["eos_tokens"] == 200
    # a provider of another model refuses with an explicit error frame
    bad = buyer.call_raw("trade", peer=swarm.providers_b[0].peer_id, model=MODEL_A, chunks=1)
    assert not bad["ok"] and "RemoteStreamError" in bad["error"]


def test_bootstrap_health_and_metrics(swarm: Swarm) -> None:
    port = swarm.boot.info["http_port"]
    health = json.loads(
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read()
    )
    assert health["status"] == "ok" and health["peer_id"] == swarm.boot.peer_id
    assert health["peers"] >= 9
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "hearth_peers 9.0" in metrics or "hearth_peers 1" in metrics
    assert "hearth_rendezvous_registrations" in metrics
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_hostile_peer_cannot_crash_or_stall_the_swarm(swarm: Swarm) -> None:
    victim = swarm.providers_a[0]
    targets = [victim.addr, swarm.boot.addr, swarm.buyers[0].addr]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.p2pnode.net.hostile_peer",
            *[a for t in targets for a in ("--target", t)],
        ],
        capture_output=True,
        text=True,
        timeout=150,
        env=child_env(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    # it really reached our protocols, /meshsub included
    sent = report["targets"][victim.addr]
    assert sent["/meshsub/1.1.0"].startswith("sent:")
    assert sent["/hearth/test/trade/1"].startswith("sent:")
    assert len([v for v in sent.values() if v.startswith("sent:")]) >= 6
    # insecure dialers were refused
    assert report["plaintext_connected"] is False
    assert report["secio_connected"] is False
    # everybody is alive and the victim noticed and penalised the attacker
    assert swarm.boot.alive() and all(p.alive() for p in swarm.peers)
    stats = victim.call("stats")["pubsub"]
    offences = stats["offences"]
    assert sum(offences.values()) >= 2, stats
    assert any(k.startswith(("malformed:", "forged:")) for k in offences), stats
    assert stats["blacklisted"] >= 1, stats
    # …and keep serving: trades and gossip still work
    r = swarm.buyers[1].call("trade", peer=victim.peer_id, model=MODEL_A, chunks=10)
    assert r["chunks"] == 10
    victim.call("publish_offer")
    wait_until(lambda: victim.peer_id in swarm.buyers[2].call("received")["offers"], 30)
