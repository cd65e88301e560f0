"""Panic latency: mock pin edge -> alert received by a subscriber through mosquitto.

Beside it, in the same run, the bare path: a gpiozero callback that calls
paho's publish (QoS 1, TCP_NODELAY), no agent. Both subscribers are in this
process, so one clock times the edge and the arrival.
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import threading
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


class Arrivals:
    def __init__(self, port: int, topic: str, match=lambda payload: True):
        self.times: list[float] = []
        self.cond = threading.Condition()
        self.match = match
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        ready.wait(10)

    def _on_message(self, c, u, msg):
        t = time.perf_counter()
        if msg.payload and self.match(msg.payload):
            with self.cond:
                self.times.append(t)
                self.cond.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.times) >= n, timeout):
                raise TimeoutError(f"message {n} did not arrive")
            return self.times[n - 1]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def percentiles(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]


def bare(port: int, presses: int) -> list[float]:
    factory = MockFactory()
    pin = factory.pin(22)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    arrivals = Arrivals(port, f"{BASE}/bare")
    button = DigitalInputDevice(22, pull_up=True, pin_factory=factory)
    button.when_activated = lambda: pub.publish(f"{BASE}/bare", b'{"state":"alarm"}', qos=1)
    out = []
    try:
        time.sleep(0.3)
        for i in range(presses):
            t0 = time.perf_counter()
            pin.drive_low()
            out.append((arrivals.wait(i + 1) - t0) * 1000)
            pin.drive_high()
            time.sleep(0.002)
    finally:
        button.close()
        arrivals.close()
        pub.disconnect()
        pub.loop_stop()
    return out


def agent_path(port: int, presses: int) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        settings = validate({
            "hall": {"id": "h1", "city": "bench", "branch": "b"},
            "mqtt": {"host": "127.0.0.1", "port": port, "drain_s": 2}, "storage": {"dir": d},
            "commands": {"allow_reset": True},
            "inputs": [{"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc", "bounce_ms": 0}]})
        agent = Agent(settings, simulate=True)
        arrivals = Arrivals(port, f"{BASE}/alert/panic/panic.1", match=lambda p: b'"active"' in p)
        agent.start()
        watcher = agent.devices.inputs["panic.1"]
        pin = watcher.device.pin
        out = []
        try:
            deadline = time.monotonic() + 10
            while not agent.link.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            for i in range(presses):
                t0 = time.perf_counter()
                pin.set_contact(False)            # NC loop opens: pressed
                out.append((arrivals.wait(i + 1) - t0) * 1000)
                pin.set_contact(True)
                watcher.reset()                   # as the manager's key would
                time.sleep(0.002)
        finally:
            arrivals.close()
            agent.stop()
        return out


def run(port: int, presses: int = 500) -> list[dict]:
    raw = bare(port, presses)
    ours = agent_path(port, presses)
    (r50, r99), (o50, o99) = percentiles(raw), percentiles(ours)
    return [
        {"bench": f"panic edge -> alert received, p50 ({presses} presses)", "unit": "ms", "ours": o50, "raw_paho": r50,
         "goal": "<= 2x bare", "met": o50 <= 2 * r50},
        {"bench": f"panic edge -> alert received, p99", "unit": "ms", "ours": o99, "raw_paho": r99,
         "goal": "< 5 ms", "met": o99 < 5.0},
    ]
