"""A subscriber in its own process, standing for the central server.

    python -m bench.subscriber PORT TOPIC [NEEDLE]

Prints ``ready`` once subscribed, then for each non-empty message whose payload
contains NEEDLE: its arrival time (``time.perf_counter``, which is
CLOCK_MONOTONIC on Linux: the same clock in every process), its size and its
retain flag.
"""

from __future__ import annotations

import socket
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    port, topic = int(sys.argv[1]), sys.argv[2]
    needle = sys.argv[3].encode() if len(sys.argv) > 3 else b""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c, u, msg):
        t = time.perf_counter()
        if msg.payload and needle in msg.payload:
            sys.stdout.write(f"{t!r} {len(msg.payload)} {int(msg.retain)}\n")
            sys.stdout.flush()

    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *a: (sys.stdout.write("ready\n"), sys.stdout.flush())
    client.on_message = on_message
    client.on_socket_open = lambda c, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect("127.0.0.1", port)
    client.loop_forever()


if __name__ == "__main__":
    main()
