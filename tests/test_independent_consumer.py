"""The invariants, checked by a consumer that shares no code with the agent
(mosquitto_sub, libmosquitto in C) across two outages of the hall's link (a
forwarder between the agent and the broker is cut, with RST, and refuses
connections for a while) while readings, health and events flow: every seq
delivered, id <-> seq one to one, order per topic, and the broker's retained
truth at the end equal to the newest envelope seen on each topic (a republish
never goes back in time).

The outage is on the hall's side, not a broker restart: mosquitto 2.0.11 was
seen to lose the messages it had queued for an offline persistent subscriber
when it restarts (it acknowledged them to the agent), which is the broker's
loss, not the hall's."""

import json
import shutil
import subprocess
import time

import pytest

from hall_agent.agent import Agent
from hall_agent.config import validate
from mqtt_helpers import Broker, wait_until

BASE = "halls/zigong/ziliujing/zg-001"


def sub(port, out, *extra):
    return subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", f"{BASE}/#",
                             "-F", "%r %t %x", *extra], stdout=out, stderr=subprocess.DEVNULL)


def parse(text):
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 2:
            continue
        retain, topic, hexed = parts[0] == "1", parts[1], parts[2] if len(parts) > 2 else ""
        out.append((retain, topic, bytes.fromhex(hexed)))
    return out


class Forwarder:
    """127.0.0.1:port -> the broker; ``cut()`` resets every connection and refuses new ones."""

    def __init__(self, target: int):
        import socket
        import threading
        self.target = target
        self.up = threading.Event()
        self.up.set()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.conns: list = []
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import struct
        import threading
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if not self.up.is_set():
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                continue
            b = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [c, b]
            for x, y in ((c, b), (b, c)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def cut(self):
        import socket
        import struct
        self.up.clear()
        conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def restore(self):
        self.up.set()

    def stop(self):
        self.stopping = True
        self.cut()
        self.lsock.close()


def test_invariants_seen_by_an_independent_consumer(tmp_path):
    if not shutil.which("mosquitto_sub"):
        pytest.fail("mosquitto_sub missing (package mosquitto-clients)")
    # the consumer is cut off by the broker's restarts too: its persistent session must also
    # queue the QoS 0 readings and health published before it is back
    broker = Broker(tmp_path / "broker").start()
    link = Forwarder(broker.port)
    log = open(tmp_path / "consumer.txt", "w")
    consumer = sub(broker.port, log)
    time.sleep(0.5)  # subscribed before the hall starts
    settings = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                         "mqtt": {"host": "127.0.0.1", "port": link.port, "drain_s": 2},
                         "agent": {"health_interval_s": 1}, "storage": {"dir": str(tmp_path / "state")},
                         "sensors": [{"id": "t.hall", "driver": "sht3x", "interval_s": 0.3}]})
    agent = Agent(settings, simulate=True)
    agent.link.max_delay = 1.0
    agent.start()
    try:
        assert wait_until(lambda: agent.link.connected, 10)
        time.sleep(0.5)
        for outage in range(2):
            for i in range(20):
                agent.emit(agent.events.agent("test", {"outage": outage, "n": i}))
                agent.emit(agent.events.state("door.x", {"state": "open" if i % 2 else "closed"}))
            link.cut()
            for i in range(20, 40):  # while the broker is away; readings keep coming
                agent.emit(agent.events.agent("test", {"outage": outage, "n": i}))
                agent.emit(agent.events.state("door.x", {"state": "open" if i % 2 else "closed"}))
                time.sleep(0.05)
            time.sleep(1.0)
            assert not agent.link.connected
            link.restore()
            assert wait_until(lambda: agent.link.connected, 20)
        assert wait_until(lambda: agent.outbox.depth == 0, 20)
        time.sleep(1.5)
    finally:
        agent.stop()
    time.sleep(1.0)
    consumer.terminate()
    consumer.wait(5)
    log.close()
    try:
        snap = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", f"{BASE}/#",
                              "-F", "%r %t %x", "--retained-only", "-W", "2"], capture_output=True, text=True)
    finally:
        link.stop()
        broker.stop()
    seen = parse((tmp_path / "consumer.txt").read_text())
    envelopes = [(retain, topic, json.loads(p)) for retain, topic, p in seen if p and not topic.endswith("/status")]
    by_id, by_seq = {}, {}
    for _, topic, env in envelopes:
        assert by_id.setdefault(env["id"], env["seq"]) == env["seq"], "an id changed its seq"
        assert by_seq.setdefault(env["seq"], env["id"]) == env["id"], "a seq was given to two envelopes"
    seqs = sorted(by_seq)
    assert seqs == list(range(1, seqs[-1] + 1)), f"seqs missing: {sorted(set(range(1, seqs[-1] + 1)) - set(seqs))}"
    tests = [e["data"]["n"] for _, t, e in envelopes if t.endswith("/event") and e["data"].get("event") == "test"]
    assert len(set(tests)) == 40 and len(tests) >= 80
    newest: dict[str, dict] = {}
    for _, topic, env in envelopes:  # order per topic: a new id always has a higher seq than the last new one
        last = newest.get(topic)
        if last is None or env["seq"] > last["seq"]:
            newest[topic] = env
        elif env["id"] != last["id"]:
            assert env["id"] in by_id and env["seq"] <= last["seq"]  # a redelivery of an older one
            firsts = [e["seq"] for _, t, e in envelopes if t == topic and e["id"] == env["id"]]
            assert firsts, topic
    for topic in newest:
        order = []
        for _, t, e in envelopes:
            if t == topic and e["id"] not in [x for x in order]:
                order.append(e["id"])
        assert [by_id[i] for i in order] == sorted(by_id[i] for i in order), f"out of order on {topic}"
    retained = {t: json.loads(p) for r, t, p in parse(snap.stdout) if p and not t.endswith("/status")}
    for topic in ("state/door.x", "telemetry/t.hall", "health"):
        assert retained[f"{BASE}/{topic}"]["id"] == newest[f"{BASE}/{topic}"]["id"], topic
