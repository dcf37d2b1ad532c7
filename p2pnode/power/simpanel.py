"""A simulated SPAN panel on a real MQTT broker, for tests and the live-latency bench.

:class:`Mosquitto` runs Debian's ``mosquitto`` broker on 127.0.0.1 on a free port
with a temporary config and stops it by PID. :class:`SimulatedSpanPanel` plays the
panel's side of what ``span-panel-api`` expects: it serves the Homie schema over real
HTTP (``GET /api/v2/homie/schema``) and publishes the Homie v5 device as retained
MQTT messages under ``ebus/5/<serial>/…`` (``$description``, ``$state=ready``, the
core node's ``breaker-rating``, the upstream lugs' ``active-power`` = main meter, and
one circuit — the GPU node — with ``name`` and ``active-power``, negative for
consumption as the real panel reports it). No TLS: the library is given
``use_tls=False``, so it does not fetch the panel's CA.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

__all__ = ["Mosquitto", "SimulatedSpanPanel", "free_port"]

PREFIX = "ebus/5"
CIRCUIT_ID = "3a1f2b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"
SCHEMA = {
    "firmwareVersion": "spanos2/sim/1",
    "types": {
        "energy.ebus.device.distribution-enclosure.core": {
            "breaker-rating": {"datatype": "integer", "unit": "A"},
        },
        "energy.ebus.device.lugs.upstream": {
            "active-power": {"datatype": "float", "unit": "W"},
        },
        "energy.ebus.device.circuit": {
            "name": {"datatype": "string"},
            "active-power": {"datatype": "float", "unit": "W"},
            "space": {"datatype": "integer", "format": "1:32:1"},
        },
    },
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """``with Mosquitto() as broker:`` — a private broker on ``broker.port``."""

    def __init__(self) -> None:
        exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.exe = exe
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="hearth-mosquitto-")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mosquitto:
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise TimeoutError("mosquitto did not start listening within 20 s")

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._dir.cleanup()


class _SchemaHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/api/v2/homie/schema":
            self.send_error(404)
            return
        body = json.dumps(SCHEMA).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class SimulatedSpanPanel:
    """``with SimulatedSpanPanel(broker_port) as panel: panel.set_power(main_w=…, node_w=…)``."""

    def __init__(
        self, broker_port: int, *, serial: str = "nt-sim-0001", breaker_a: int = 200
    ) -> None:
        self.serial = serial
        self.broker_port = broker_port
        self.breaker_a = breaker_a
        self.node_circuit_name = "GPU node"
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _SchemaHandler)
        self.http_port = int(self._http.server_address[1])
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion

        self._mqtt = Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{serial}")

    def _pub(self, suffix: str, payload: str) -> None:
        info = self._mqtt.publish(f"{PREFIX}/{self.serial}/{suffix}", payload, qos=1, retain=True)
        info.wait_for_publish(timeout=10)

    def __enter__(self) -> SimulatedSpanPanel:
        self._thread.start()
        self._mqtt.connect("127.0.0.1", self.broker_port)
        self._mqtt.loop_start()
        description = {
            "homie": "5.0",
            "name": "SPAN Panel (simulated)",
            "nodes": {
                "core": {"type": "energy.ebus.device.distribution-enclosure.core"},
                "upstream-lugs": {"type": "energy.ebus.device.lugs.upstream"},
                CIRCUIT_ID: {"type": "energy.ebus.device.circuit"},
            },
        }
        self._pub("$description", json.dumps(description))
        self._pub("core/breaker-rating", str(self.breaker_a))
        self._pub(f"{CIRCUIT_ID}/name", self.node_circuit_name)
        self._pub(f"{CIRCUIT_ID}/space", "1")
        self.set_power(main_w=1000.0, node_w=0.0)
        self._pub("$state", "ready")
        return self

    def set_power(self, *, main_w: float, node_w: float | None = None) -> None:
        """Publish a new main-meter reading (and the node circuit's draw)."""
        if node_w is not None:
            self._pub(f"{CIRCUIT_ID}/active-power", f"{-node_w:.1f}")
        self._pub("upstream-lugs/active-power", f"{main_w:.1f}")

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._mqtt.loop_stop()
        self._mqtt.disconnect()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=10)
