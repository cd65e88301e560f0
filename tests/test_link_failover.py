"""Several brokers (issue 17.4) and the robustness of the link's own code (17.7)."""

import time

import pytest

from hall_agent.agent import Agent
from hall_agent.config import ConfigError, validate
from mqtt_helpers import Broker, Recorder, wait_until

BASE = "halls/zigong/ziliujing/zg-001"


def hall(state, **mqtt):
    return validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                     "mqtt": {"drain_s": 1, **mqtt}, "storage": {"dir": str(state)}})


def test_fails_over_to_the_next_broker_with_the_retained_truth(tmp_path):
    a = Broker(tmp_path / "a", persistence=False).start()
    b = Broker(tmp_path / "b", persistence=False).start()
    agent = Agent(hall(tmp_path / "state", hosts=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]), simulate=True)
    agent.link.max_delay = 1.0
    agent.start()
    try:
        assert wait_until(lambda: agent.link.connected, 10)
        assert agent.link.health()["broker"] == f"127.0.0.1:{a.port}"
        agent.emit(agent.events.state("door.x", {"state": "open"}))
        assert wait_until(lambda: agent.retained.get(f"{BASE}/state/door.x") is not None, 10)
        sent = agent.retained.get(f"{BASE}/state/door.x").payload
        a.stop()  # the cluster member the hall is on goes away
        assert wait_until(lambda: agent.link.connected and agent.link.broker.endswith(f":{b.port}"), 20)
        on_b = Recorder(b.port, [f"{BASE}/#"])
        try:
            assert on_b.wait_for(lambda r: any(m.topic == f"{BASE}/state/door.x" and m.retain for m in r.messages), 10)
            got = [m.payload for m in on_b.messages if m.topic == f"{BASE}/state/door.x"][0]
            assert got == sent  # the same envelope, republished on the broker that had never seen it
            agent.emit(agent.events.agent("after-failover", {}))
            assert on_b.wait_for(lambda r: any(b'"after-failover"' in m.payload for m in r.messages), 10)
        finally:
            on_b.close()
        assert agent.link.health()["broker"] == f"127.0.0.1:{b.port}"
    finally:
        agent.stop()
        a.stop()
        b.stop()


def test_hosts_are_checked_with_their_key_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        hall(tmp_path, hosts=["ok.example.com:8883", "bad host:1", "x.example.com:99999"])
    text = "\n".join(e.value.problems)
    assert "mqtt.hosts[1]: 'bad host:1' is not" in text and "mqtt.hosts[2]: 'x.example.com:99999'" in text
    s = hall(tmp_path, hosts=["a.example.com:8883", "b.example.com"], tls=True)
    assert s.mqtt.endpoints == [("a.example.com", 8883), ("b.example.com", 8883)]


def test_acknowledged_rows_are_not_forgotten_when_removing_them_fails(tmp_path):
    agent = Agent(hall(tmp_path / "state", host="127.0.0.1", port=1))
    try:
        agent.emit(agent.events.agent("x", {}))
        rows = agent.outbox.take(10)
        real = agent.outbox.done
        calls = []

        def failing(positions):
            calls.append(list(positions))
            if len(calls) == 1:
                raise OSError("disk I/O error")
            real(positions)
        agent.outbox.done = failing
        agent.link._done = list(rows)
        with pytest.raises(OSError):
            agent.link._remove_done()
        assert agent.link._done == rows  # kept for the next turn
        agent.link._remove_done()
        assert calls == [[r.pos for r in rows]] * 2 and agent.outbox.depth == 0
    finally:
        agent.outbox.close()
        agent.retained.close()


def test_no_exception_in_the_connect_path_ends_the_network_thread(broker, tmp_path):
    agent = Agent(hall(tmp_path / "state", host="127.0.0.1", port=broker.port))
    agent.link.max_delay = 0.5
    real = agent.link.client.connect
    fails = []

    def connect(*a, **kw):
        if len(fails) < 3:
            fails.append(1)
            raise RuntimeError("a bug in the connect path")
        return real(*a, **kw)
    agent.link.client.connect = connect
    agent.start()
    try:
        assert wait_until(lambda: agent.link.connected, 15)
        assert len(fails) == 3 and agent.link.health()["connect_failures"] == 3
    finally:
        agent.stop()
