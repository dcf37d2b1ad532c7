"""Spawn and drive node processes (bench peers, bootstraps) over JSON lines.

Used by the multi-process tests and ``hearth bench net``. Each :class:`PeerProcess`
owns one child: it waits for the child's ``{"event": "ready", …}`` line, sends JSON
commands on stdin and reads one JSON reply line per command (with a timeout, via a
reader thread, so a hung child cannot hang the caller). :meth:`PeerProcess.stop` ends
the child by its PID — politely, then SIGKILL — and is safe to call twice.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

__all__ = ["PeerProcess", "spawn_bootstrap", "spawn_peer", "stop_all"]


def stop_all(procs: list[PeerProcess | None]) -> None:
    """Stop many children: ask all to quit at once, then reap (SIGKILL laggards) by PID."""
    live = [p for p in procs if p is not None]
    for p in live:
        p.request_stop()
    for p in live:
        p.stop()


class PeerProcess:
    """One child process speaking the JSON-line protocol of :mod:`p2pnode.bench_net.peer`."""

    def __init__(
        self,
        argv: list[str],
        *,
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
        stderr_path: Path | None = None,
        wait: bool = True,
    ) -> None:
        self._stderr: IO[bytes] | int
        if stderr_path is not None:
            self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        else:
            self._stderr = subprocess.DEVNULL
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env=env,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._ready_timeout = ready_timeout
        self.info: dict[str, Any] = {}
        self.peer_id = ""
        self.addrs: list[str] = []
        if wait:
            self.wait_ready()

    def wait_ready(self) -> PeerProcess:
        """Block until the child's ready line (stops the child on failure)."""
        try:
            self.info = self.next_reply(self._ready_timeout)
        except Exception:
            self.stop()
            raise
        if self.info.get("event") != "ready":
            self.stop()
            raise RuntimeError(f"child did not report ready: {self.info}")
        self.peer_id = self.info["peer_id"]
        self.addrs = self.info["addrs"]
        return self

    @property
    def addr(self) -> str:
        """The first (loopback) address, …/p2p/<peer id>."""
        return self.addrs[0]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def next_reply(self, timeout: float) -> dict[str, Any]:
        """The child's next JSON line, within ``timeout`` s (raises if it never comes)."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"pid {self.pid}: no answer within {timeout} s") from None
            if line is None:
                raise RuntimeError(f"pid {self.pid} exited (code {self.proc.poll()})")
            line = line.strip()
            if line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                return result

    def send_raw(self, req: dict[str, Any]) -> None:
        """Send one command without waiting (read the reply later with :meth:`next_reply`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()

    def call_raw(self, cmd: str, timeout: float = 30.0, **kwargs: Any) -> dict[str, Any]:
        """Send one command and return its reply as is (``ok`` may be False)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self.next_reply(timeout)

    def call(self, cmd: str, timeout: float = 30.0, **kwargs: Any) -> dict[str, Any]:
        """Send one command and return its reply; raises on error replies."""
        reply = self.call_raw(cmd, timeout, **kwargs)
        if not reply.get("ok", False):
            raise RuntimeError(f"pid {self.pid} {cmd}: {reply.get('error')}")
        return reply

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this child (by PID)."""
        if self.alive():
            os.kill(self.pid, sig)

    def request_stop(self) -> None:
        """Ask the child to quit without waiting (stop many children in parallel)."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to quit, then SIGKILL it by PID; idempotent."""
        if self.proc.poll() is None:
            self.request_stop()  # SIGCONT first: a stopped child cannot quit
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if not isinstance(self._stderr, int):
            self._stderr.close()


def spawn_peer(bootstrap: list[str], *extra: str, **kw: Any) -> PeerProcess:
    """Start a bench peer (:mod:`p2pnode.bench_net.peer`) joined to ``bootstrap``."""
    argv = [sys.executable, "-m", "p2pnode.bench_net.peer"]
    for b in bootstrap:
        argv += ["--bootstrap", b]
    return PeerProcess(argv + list(extra), **kw)


def spawn_bootstrap(*extra: str, **kw: Any) -> PeerProcess:
    """Start ``python -m bootstrap`` on a free loopback port (stdin 'quit' stops it)."""
    argv = [sys.executable, "-m", "bootstrap", "--listen", "/ip4/127.0.0.1/tcp/0"]
    return PeerProcess(argv + list(extra), **kw)
