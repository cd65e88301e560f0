"""Flow control against a server that enforces it (issue 17.3): MQTT 5's Receive
Maximum honoured from boot and after an outage (the resends included), and a
reconnect back-off that keeps growing while connections die right after CONNACK."""

import json
import time

from fake_mqtt import FakeServer
from hall_agent.config import validate
from hall_agent.envelope import Events
from hall_agent.link import Link
from hall_agent.outbox import Outbox
from mqtt_helpers import wait_until

EVENTS = Events("zg-001", "Asia/Shanghai", "halls/zigong/ziliujing/zg-001")


def make_link(tmp_path, port, **mqtt):
    settings = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                         "mqtt": {"host": "127.0.0.1", "port": port, **mqtt}, "storage": {"dir": str(tmp_path)}})
    box = Outbox(tmp_path / "outbox.sqlite3")
    return Link(settings, box, EVENTS.now), box


def event_seqs(server):
    seen, out = set(), []
    for topic, payload, _ in list(server.published):
        if topic.endswith("/event"):
            doc = json.loads(payload)
            if doc["id"] not in seen:
                seen.add(doc["id"])
                out.append(doc["seq"])
    return out


def test_receive_maximum_10_from_boot_with_a_full_outbox(tmp_path):
    server = FakeServer(receive_maximum=10).start()
    link, box = make_link(tmp_path, server.port)
    for i in range(300):  # an outage's worth, waiting at boot
        box.enqueue(EVENTS.agent("test", {"n": i}))
    link.start()
    try:
        assert wait_until(lambda: box.depth == 0, 30), f"depth {box.depth}, violations {server.violations}"
        assert server.violations == 0 and server.max_in_flight <= 10
        assert len(server.connections) == 1  # never thrown out
        assert event_seqs(server) == list(range(1, 301))
        assert link.receive_maximum == 10
    finally:
        link.stop(1.0)
        box.close()
        server.stop()


def test_receive_maximum_after_an_outage_counts_the_resends(tmp_path):
    """A connection dies with many messages unacknowledged; the server that comes back
    allows 10: what the agent sends again must fit too."""
    generous = FakeServer(receive_maximum=200, ack=False).start()
    link, box = make_link(tmp_path, generous.port)
    link.start()
    try:
        assert wait_until(lambda: link.connected, 10)
        for i in range(150):
            box.enqueue(EVENTS.agent("test", {"n": i}))
        link.kick()
        assert wait_until(lambda: len(generous.published) >= 150, 10)  # all in flight, none acknowledged
        port = generous.port
        generous.stop()  # the outage: connection gone, 150 unacknowledged
        assert wait_until(lambda: not link.connected, 10)
        strict = FakeServer(receive_maximum=10)
        strict.start(port=port)
        try:
            assert wait_until(lambda: box.depth == 0, 40), f"depth {box.depth}, violations {strict.violations}"
            assert strict.violations == 0 and strict.max_in_flight <= 10
            assert len(strict.connections) == 1
            assert event_seqs(strict) == list(range(1, 151))  # every one again, in order
        finally:
            link.stop(1.0)
            strict.stop()
    finally:
        box.close()


def test_backoff_keeps_growing_while_connections_die_after_connack(tmp_path):
    server = FakeServer(drop_after_connack=True).start()
    link, box = make_link(tmp_path, server.port)
    link.start()
    try:
        time.sleep(8)
        n = len(server.connections)
        # 0.5 s doubling with +-50 % jitter: about 0, 0.5, 1.5, 3.5, 7.5 s. A back-off reset by
        # every CONNACK would come back every 0.25-0.75 s: 10 or more connections
        assert 2 <= n <= 7, f"{n} connections in 8 s"
        gaps = [b - a for a, b in zip(server.connections, server.connections[1:])]
        assert gaps[-1] > gaps[0]
        h = link.health()
        assert sum(h["disconnects"].values()) >= n - 1
    finally:
        link.stop(0.5)
        box.close()
        server.stop()
