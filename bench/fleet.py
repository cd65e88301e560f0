"""The fleet: N halls against one mosquitto.

Each hall here is traffic-equivalent to the example hall, not a whole agent
(500 agents would need 500 Pis' worth of memory on this one machine): a paho
client publishing the example hall's message mix — six sensors' telemetry at
their intervals (the SGP30 every second), health every minute, a state or
event now and then — with the agent's QoS and retain choices, its status
retained with a last will. ``speed`` compresses time (10 = ten minutes of a
hall's traffic per minute). A central subscriber on ``halls/#`` counts what
arrives; the broker's CPU comes from /proc. Halls are spread over worker
processes (one paho network thread per hall).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

#: (topic suffix, period s, qos, retain) — the example hall's traffic
PROFILE = [("telemetry/env.counter", 30, 0, True), ("telemetry/env.waiting", 30, 0, True),
           ("telemetry/co2.hall", 10, 0, True), ("telemetry/voc.hall", 1, 0, True),
           ("telemetry/pm.hall", 30, 0, True), ("telemetry/hcho.hall", 30, 0, True),
           ("health", 60, 0, True), ("event", 120, 1, False), ("state/door.side", 600, 1, True)]
PER_HALL_PER_S = sum(1 / p for _, p, _, _ in PROFILE)
PAYLOAD = json.dumps({"schema": 1, "id": "x" * 32, "seq": 1, "ts": "2026-11-26T08:30:00.123+08:00", "hall": "h",
                      "type": "reading", "source": "co2.hall", "severity": "info", "moment": None,
                      "data": {"model": "scd4x", "values": {"co2_ppm": 812.0, "temperature_c": 22.4,
                                                             "humidity_pct": 41.3}}}).encode()


def _worker(port: int, halls: list[int], seconds: float, speed: float, counter) -> None:
    clients = []
    for h in halls:
        base = f"halls/fleet/b{h % 10}/h{h}"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-{h}", protocol=mqtt.MQTTv5)
        c.will_set(f"{base}/status", b'{"state":"offline"}', 1, True)
        c.connect("127.0.0.1", port, 60)
        c.loop_start()
        c.publish(f"{base}/status", b'{"state":"online"}', 1, True)
        clients.append((base, c))
    start = time.monotonic()
    due = {(i, j): start + (i * 0.013 + j * 0.17) % (p / speed) for i in range(len(clients))
           for j, (_, p, _, _) in enumerate(PROFILE)}
    sent = 0
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        for (i, j), at in due.items():
            if at <= now:
                base, c = clients[i]
                suffix, period, qos, retain = PROFILE[j]
                c.publish(f"{base}/{suffix}", PAYLOAD, qos, retain)
                sent += 1
                due[(i, j)] = at + period / speed
        time.sleep(0.005)
    with counter.get_lock():
        counter.value += sent
    for _, c in clients:
        c.disconnect()
        c.loop_stop()


def _broker_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(port: int, broker_pid: int, halls: int, seconds: float, speed: float, processes: int = 2) -> dict:
    received = [0]
    lock = threading.Lock()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-central", protocol=mqtt.MQTTv5)

    def on_message(c, u, m):
        with lock:
            received[0] += 1
    sub.on_message = on_message
    ready = threading.Event()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("halls/fleet/#", qos=1)
    sub.on_subscribe = lambda *a: ready.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(5)
    time.sleep(0.5)
    with lock:
        received[0] = 0  # retained messages of an earlier round
    counter = mp.Value("l", 0)
    groups = [list(range(halls))[i::processes] for i in range(processes)]
    cpu0, t0 = _broker_cpu(broker_pid), time.monotonic()
    workers = [mp.get_context("fork").Process(target=_worker, args=(port, g, seconds, speed, counter)) for g in groups]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    time.sleep(1.0)  # what is still in flight
    elapsed = time.monotonic() - t0
    cpu = (_broker_cpu(broker_pid) - cpu0) / elapsed * 100
    sub.disconnect()
    sub.loop_stop()
    offered = halls * PER_HALL_PER_S * speed
    sent = counter.value / seconds
    got = received[0] / seconds
    return {"halls": halls, "speed": speed, "offered_msg_s": offered, "sent_msg_s": sent, "received_msg_s": got,
            "kept_up": got >= 0.95 * sent and sent >= 0.9 * offered, "broker_cpu_pct": cpu,
            "broker_cpu_pct_per_hall_realtime": cpu / halls / speed}


def run(port: int, broker_pid: int, sizes=(50, 200, 500), speeds=(1, 10), seconds: float = 10) -> tuple[list[dict], list[dict]]:
    detail = [one(port, broker_pid, n, seconds, s) for n in sizes for s in speeds]
    rows = []
    for d in detail:
        rows.append({"bench": f"fleet: {d['halls']} halls at {d['speed']:g}x time", "unit": "msg/s",
                     "ours": d["received_msg_s"], "raw_paho": d["sent_msg_s"],
                     "goal": f"keeps up (broker {d['broker_cpu_pct']:.0f} % CPU)", "met": d["kept_up"]})
    return rows, detail
