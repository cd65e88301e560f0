"""Panic latency: mock pin edge -> alert received by a subscriber through mosquitto.

Beside it, in the same run, the bare path: a gpiozero callback that calls
paho's publish (QoS 1, TCP_NODELAY), no agent. Both subscribers run in a
process of their own, as the central server does; CLOCK_MONOTONIC (what
``time.perf_counter`` reads on Linux) times the edge here and the arrival there.
"""

from __future__ import annotations

import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from gpiozero import DigitalInputDevice
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from hall_agent.agent import Agent
from hall_agent.config import validate
import logging
logging.getLogger("hall_agent").setLevel(logging.ERROR)

BASE = "halls/bench/b/h1"
ROOT = Path(__file__).resolve().parent.parent


class Arrivals:
    """Arrival times at a subscriber in its own process (as the central server is):
    the agent's threads and the subscriber's do not share a GIL."""

    def __init__(self, port: int, topic: str, needle: str = ""):
        clock = time.get_clock_info("perf_counter").implementation
        if "CLOCK_MONOTONIC" not in clock:
            raise RuntimeError(f"perf_counter is {clock}: not comparable across processes")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.subscriber", str(port), topic, needle],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.count = 0
        self.size = 0  # of the last message
        if self._line(10.0) != "ready":
            self.close()
            raise RuntimeError("the subscriber did not subscribe")

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"message {self.count + 1} did not arrive")
        return self.proc.stdout.readline().strip()

    def wait(self, n: int, timeout: float = 5.0) -> float:
        """The arrival time of message ``n`` (1-based, in order)."""
        t = None
        while self.count < n:
            t, size, _ = self._line(timeout).split()
            self.size = int(size)
            self.count += 1
        return float(t)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def percentiles(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]


class BareRig:
    """A gpiozero callback calling paho's publish: no agent. It publishes what the agent
    publishes for an alarm: a payload of the same size, QoS 1, retained, on a topic as
    deep (``size=None``: the small unretained message of the earlier baseline)."""

    def __init__(self, port: int, size: int | None = None):
        self.factory = MockFactory()
        self.pin = self.factory.pin(22)
        self.pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.pub.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pub.connect("127.0.0.1", port)
        self.pub.loop_start()
        topic = f"{BASE}/alert/panic/bare"
        if size is None:
            payload, retain = b'{"state":"alarm"}', False
        else:
            payload, retain = b'{"state":"active"}'.ljust(size, b" "), True
        self.arrivals = Arrivals(port, topic, needle=payload[:12].decode())
        self.button = DigitalInputDevice(22, pull_up=True, pin_factory=self.factory)
        self.button.when_activated = lambda: self.pub.publish(topic, payload, qos=1, retain=retain)
        self.n = 0

    def press(self) -> float:
        self.n += 1
        t0 = time.perf_counter()
        self.pin.drive_low()
        ms = (self.arrivals.wait(self.n) - t0) * 1000
        self.pin.drive_high()
        return ms

    def close(self) -> None:
        self.button.close()
        self.arrivals.close()
        self.pub.disconnect()
        self.pub.loop_stop()


class AgentRig:
    """The agent with one panic input on a mock pin, and a subscriber to its alert topic."""

    def __init__(self, port: int, state_dir: str):
        settings = validate({
            "hall": {"id": "h1", "city": "bench", "branch": "b"},
            "mqtt": {"host": "127.0.0.1", "port": port, "drain_s": 2}, "storage": {"dir": state_dir},
            "commands": {"allow_reset": True},
            # a hall that is always closed: no opening/closing check runs during the presses
            "hours": {d: "closed" for d in ("monday", "tuesday", "wednesday", "thursday", "friday",
                                            "saturday", "sunday")},
            "inputs": [{"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc", "bounce_ms": 0}]})
        self.agent = Agent(settings, simulate=True)
        self.arrivals = Arrivals(port, f"{BASE}/alert/panic/panic.1", needle='"active"')
        self.agent.start()
        self.watcher = self.agent.devices.inputs["panic.1"]
        self.pin = self.watcher.device.pin
        deadline = time.monotonic() + 10
        while not self.agent.link.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        self.n = 0

    def press(self) -> float:
        self.n += 1
        t0 = time.perf_counter()
        self.pin.set_contact(False)            # NC loop opens: pressed
        ms = (self.arrivals.wait(self.n) - t0) * 1000
        self.pin.set_contact(True)
        self.watcher.reset()                   # as the manager's key would
        return ms

    def close(self) -> None:
        self.arrivals.close()
        self.agent.stop()


def measure(port: int, presses: int, block: int = 25) -> dict[str, list[float]]:
    """The paths set up side by side and pressed in turn, in blocks, so that each
    sees the same moments of a shared, noisy machine."""
    out: dict[str, list[float]] = {"ours": [], "bare": [], "bare-small": []}
    rigs = {}
    with tempfile.TemporaryDirectory() as d:
        try:
            rigs["ours"] = AgentRig(port, d)
            time.sleep(0.3)
            rigs["ours"].press()  # warm-up, not counted: it tells the size of the agent's alert
            rigs["bare"] = BareRig(port, rigs["ours"].arrivals.size)
            rigs["bare-small"] = BareRig(port)
            time.sleep(0.3)
            while len(out["ours"]) < presses:
                for name, rig in rigs.items():
                    for _ in range(min(block, presses - len(out[name]))):
                        out[name].append(rig.press())
                        time.sleep(0.002)
        finally:
            for rig in rigs.values():
                rig.close()
    return out


def run(port: int, presses: int = 500) -> list[dict]:
    m = measure(port, presses)
    (r50, r99), (o50, o99) = percentiles(m["bare"]), percentiles(m["ours"])
    s50 = percentiles(m["bare-small"])[0]
    return [
        {"bench": f"panic edge -> alert received, p50 ({presses} presses)", "unit": "ms", "ours": o50, "raw_paho": r50,
         "goal": "<= 2x bare", "met": o50 <= 2 * r50},
        {"bench": "panic edge -> alert received, p99", "unit": "ms", "ours": o99, "raw_paho": r99,
         "goal": "< 5 ms", "met": o99 < 5.0},
        {"bench": "panic p50 vs bare 17-byte unretained publish", "unit": "ms", "ours": o50, "raw_paho": s50,
         "goal": "(reference)", "met": None},
    ]
