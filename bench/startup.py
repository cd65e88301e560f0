"""Startup: process start -> retained ``online`` seen by a subscriber (median of n),
beside a raw paho script doing the same, and the bare import of our stack."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

STACK = "import paho.mqtt.client, pydantic_settings, gpiozero, apscheduler.schedulers.background, smbus2, serial"
RAW = """
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
c.publish(sys.argv[2], b'{"state":"online"}', 1, True).wait_for_publish(5)
import time; time.sleep(30)
"""


def _time_to_online(port: int, topic: str, argv: list[str]) -> float:
    seen = threading.Event()
    marker = {}
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ready = threading.Event()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda *a: ready.set()

    def on_message(c, u, msg):
        if b'"online"' in msg.payload and marker.get("started") and not msg.retain:
            marker["at"] = time.perf_counter()
            seen.set()
        elif b'"online"' in msg.payload and marker.get("started") and msg.retain and "at" not in marker:
            marker["at"] = time.perf_counter()
            seen.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(5)
    time.sleep(0.2)  # the retained message of the previous run has been delivered by now
    marker["started"] = True
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not seen.wait(30):
            raise TimeoutError("online never seen")
        return marker["at"] - t0
    finally:
        proc.terminate()
        proc.wait(20)
        sub.disconnect()
        sub.loop_stop()
        # clear the retained status so the next run sees a fresh one
        pub = mqtt.Client(CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish(topic, b"", 1, True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()


def run(port: int, n: int = 10) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "c.toml"
        cfg.write_text(f'[hall]\nid="h1"\ncity="bench"\nbranch="b"\n[mqtt]\nhost="127.0.0.1"\nport={port}\n'
                       f'drain_s=1\n[storage]\ndir="{d}/state"\n')
        topic = "halls/bench/b/h1/status"
        ours = [_time_to_online(port, topic, [sys.executable, "-m", "hall_agent", "run", "-c", str(cfg)])
                for _ in range(n)]
        raw = [_time_to_online(port, "bench/raw/status", [sys.executable, "-c", RAW, str(port), "bench/raw/status"])
               for _ in range(n)]
    imports = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", STACK], check=True)
        imports.append(time.perf_counter() - t0)
    return [
        {"bench": f"startup: process start -> online seen (median of {n})", "unit": "s",
         "ours": statistics.median(ours), "raw_paho": statistics.median(raw), "goal": "< 0.7 s",
         "met": statistics.median(ours) < 0.7},
        {"bench": "startup: bare import of the stack's libraries", "unit": "s", "ours": statistics.median(imports),
         "raw_paho": statistics.median(raw), "goal": "(reference)", "met": None},
    ]
