"""Outbox enqueue (per fsync policy) and drain after an outage, beside raw paho-mqtt."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hall_agent.config import validate
from hall_agent.envelope import Events
from hall_agent.link import Link
from hall_agent.outbox import Outbox

BASE = "halls/bench/b/h1"
EVENTS = Events("h1", "Asia/Shanghai", BASE)


def _payloads(n: int) -> list[bytes]:
    return [EVENTS.agent("bench", {"n": i}).encode(i + 1) for i in range(n)]


def enqueue_rate(policy: str, kind: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        box = Outbox(Path(d) / "o.db", fsync=policy)
        make = (lambda i: EVENTS.agent("bench", {"n": i})) if kind == "event" else \
               (lambda i: EVENTS.reading("env.hall", "sht3x", {"temperature_c": 23.4, "humidity_pct": 45.1}))
        envs = [make(i) for i in range(n)]
        t0 = time.perf_counter()
        for env in envs:
            box.enqueue(env)
        dt = time.perf_counter() - t0
        box.close()
    return n / dt


def raw_paho_rate(port: int, payloads: list[bytes], qos: int = 1) -> float:
    """Raw paho: publish every payload, QoS 1, until the broker has acknowledged all."""
    done = threading.Event()
    acked = [0]

    def on_publish(client, userdata, mid, rc, props):
        acked[0] += 1
        if acked[0] == len(payloads):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    for p in payloads:
        client.publish(f"{BASE}/event", p, qos)
    assert done.wait(120), f"raw paho: only {acked[0]} acknowledged"
    dt = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return len(payloads) / dt


def drain_rate(port: int, n: int) -> float:
    """Fill the outbox while no broker link runs (the outage), then time the link emptying it."""
    with tempfile.TemporaryDirectory() as d:
        settings = validate({"hall": {"id": "h1", "city": "bench", "branch": "b"},
                             "mqtt": {"host": "127.0.0.1", "port": port}, "storage": {"dir": d}})
        box = Outbox(Path(d) / "outbox.sqlite3")
        for i in range(n):
            box.enqueue(EVENTS.agent("bench", {"n": i}))
        link = Link(settings, box, EVENTS.now)
        t0 = time.perf_counter()
        link.start()
        while box.depth:
            time.sleep(0.005)
        dt = time.perf_counter() - t0
        link.stop(1.0)
        box.close()
    return n / dt


def run(port: int, repeats: int = 5, drain_n: int = 20_000) -> list[dict]:
    rows = []
    raw_enq = [raw_paho_rate(port, _payloads(2000)) for _ in range(repeats)]
    for policy in ("events", "always", "never"):
        for kind in ("event", "reading"):
            n = 300 if (policy == "always" or (policy == "events" and kind == "event")) else 3000
            rates = [enqueue_rate(policy, kind, n) for _ in range(repeats)]
            rows.append({"bench": f"outbox enqueue {kind}s, fsync={policy}", "unit": "msg/s",
                         "ours": statistics.median(rates), "raw_paho": statistics.median(raw_enq),
                         "goal": "(reference)", "met": None})
    raw = [raw_paho_rate(port, _payloads(drain_n)) for _ in range(repeats)]
    ours = [drain_rate(port, drain_n) for _ in range(repeats)]
    rows.append({"bench": f"drain {drain_n} after outage (QoS 1)", "unit": "msg/s",
                 "ours": statistics.median(ours), "raw_paho": statistics.median(raw), "goal": ">= 0.5x raw",
                 "met": statistics.median(ours) >= 0.5 * statistics.median(raw)})
    return rows
