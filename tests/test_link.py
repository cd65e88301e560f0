"""The MQTT link against a real mosquitto: status, last will, commands,
reconnects, and no event lost across broker outages or agent crashes."""

import json
import time
from datetime import datetime, timezone

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hall_agent.agent import Agent
from hall_agent.config import validate
from mqtt_helpers import AgentProcess, Recorder, publish, wait_until, write_config

BASE = "halls/zigong/ziliujing/zg-001"


def status_is(state, reason=None):
    def check(rec):
        s = rec.payloads("/status")
        return bool(s) and s[-1]["state"] == state and (reason is None or s[-1]["reason"] == reason)
    return check


def seqs_in_order(events):
    """First appearance of each id, in arrival order; redeliveries keep id and seq."""
    seen, by_id = [], {}
    for e in events:
        if e["id"] in by_id:
            assert by_id[e["id"]] == e["seq"], "a redelivered envelope changed its seq"
            continue
        by_id[e["id"]] = e["seq"]
        seen.append(e["seq"])
    return seen


@pytest.mark.parametrize("protocol", [5, 311])
def test_online_commands_and_clean_shutdown(broker, tmp_path, protocol):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", f"[agent]\nhealth_interval_s = 1\n")
    cfg.write_text(cfg.read_text().replace("drain_s = 3", f"drain_s = 3\nprotocol = {protocol}"))
    rec = Recorder(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(cfg).start()
    try:
        assert rec.wait_for(status_is("online")), agent.output()
        status = rec.payloads("/status")[-1]
        assert status["version"] and status["ts"].endswith("+08:00")
        publish(broker.port, f"{BASE}/cmd", '{"id":"c1","command":"ping"}')
        publish(broker.port, f"{BASE}/cmd", '{"id":"c2","command":"status"}')
        publish(broker.port, f"{BASE}/cmd", b"\x00not json")
        assert rec.wait_for(lambda r: len(r.payloads("/cmd/reply")) == 3)
        replies = {r["id"]: r for r in rec.payloads("/cmd/reply")}
        assert replies["c1"]["ok"] and replies["c1"]["result"]["pong"]
        assert replies["c2"]["result"]["outbox"]["dropped"] == 0 and replies["c2"]["result"]["connected"]
        assert replies[None]["error"]["code"] == "malformed"
        assert rec.wait_for(lambda r: len([e for e in r.payloads("/event") if e["type"] == "command"]) == 3)
        assert rec.wait_for(lambda r: r.payloads("/health")), "no health envelope"
        h = rec.payloads("/health")[-1]["data"]
        assert {"uptime_s", "outbox", "cpu_temperature_c", "disk_free_mb", "rss_mb"} <= set(h)
        assert agent.terminate() == 0
        assert rec.wait_for(status_is("offline", "shutdown"))
        assert "connection lost" not in agent.output()  # our own DISCONNECT is not a lost connection
    finally:
        agent.kill()
        rec.close()
    later = Recorder(broker.port, [f"{BASE}/status"])  # retained for whoever comes later
    assert later.wait_for(status_is("offline", "shutdown"))
    later.close()


def test_last_will_when_the_agent_dies(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state")
    rec = Recorder(broker.port, [f"{BASE}/status"])
    agent = AgentProcess(cfg).start()
    try:
        assert rec.wait_for(status_is("online")), agent.output()
        agent.kill()
        assert rec.wait_for(status_is("offline", "connection-lost"))
        online, will = rec.payloads("/status")[-2:]
        # issue 22.7: the will carried its connect time, older than the online it replaces
        assert online["state"] == "online" and will["ts"] >= online["ts"], (online, will)
    finally:
        agent.kill()
        rec.close()


def test_mqtt5_response_topic_and_correlation_data(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state")
    rec = Recorder(broker.port, [f"{BASE}/status", "central/replies/#"])
    agent = AgentProcess(cfg).start()
    try:
        assert rec.wait_for(status_is("online"))
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "central/replies/42"
        props.CorrelationData = b"\x01corr"
        publish(broker.port, f"{BASE}/cmd", '{"id":"c9","command":"ping"}', properties=props)
        assert rec.wait_for(lambda r: r.on("central/replies/42"))
        msg = rec.on("central/replies/42")[0]
        assert json.loads(msg.payload)["id"] == "c9"
        assert msg.properties.CorrelationData == b"\x01corr"
    finally:
        agent.kill()
        rec.close()


def test_subscriptions_and_online_restored_after_broker_restart(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state")
    agent = AgentProcess(cfg).start()
    rec = Recorder(broker.port, [f"{BASE}/#"], session="central-1")
    try:
        assert rec.wait_for(status_is("online"))
        broker.restart()
        restarted = datetime.now(timezone.utc)
        # a new "online", not the retained one the broker kept across its restart
        assert rec.wait_for(lambda r: any(s["state"] == "online" and datetime.fromisoformat(s["ts"]) >= restarted
                                          for s in r.payloads("/status")), 20)
        publish(broker.port, f"{BASE}/cmd", '{"id":"after-restart","command":"ping"}')
        assert rec.wait_for(lambda r: any(x["id"] == "after-restart" for x in r.payloads("/cmd/reply")), 10)
    finally:
        agent.kill()
        rec.close()


def agent_settings(port, state, **extra):
    data = {"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
            "mqtt": {"host": "127.0.0.1", "port": port, "drain_s": 2}, "storage": {"dir": str(state)}}
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return validate(data)


def test_broker_outage_loses_nothing_and_keeps_order(broker, tmp_path):
    rec = Recorder(broker.port, [f"{BASE}/event"], session="central-2")
    agent = Agent(agent_settings(broker.port, tmp_path / "state"))
    agent.start()
    try:
        assert wait_until(lambda: agent.link.connected)
        for i in range(50):
            agent.emit(agent.events.agent("test", {"n": i}))
        broker.stop()
        assert wait_until(lambda: not agent.link.connected)
        for i in range(50, 250):  # created while the broker is away
            agent.emit(agent.events.agent("test", {"n": i}))
        time.sleep(2)
        broker.start()
        assert rec.wait_for(lambda r: len({e["id"] for e in r.payloads("/event")}) >= 251, 30), \
            f"got {len(rec.payloads('/event'))}"
        seqs = seqs_in_order(rec.payloads("/event"))
        assert seqs == list(range(1, 252))  # started event + 250, in order, no gap
        ns = [e["data"]["n"] for e in rec.payloads("/event") if e["data"].get("event") == "test"]
        assert sorted(set(ns)) == list(range(250))
        assert wait_until(lambda: agent.outbox.depth == 0)
    finally:
        agent.stop()
        rec.close()


def emit_from_threads(agent, threads=4, each=150):
    """Several threads emit at once: each writes to the socket itself (kick), while the
    pump and the network thread do theirs."""
    import threading
    start = threading.Barrier(threads)

    def work(t):
        start.wait()
        for i in range(each):
            agent.emit(agent.events.agent("test", {"t": t, "n": i}))
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_concurrent_writers_share_the_socket_without_corrupting_it(broker, tmp_path):
    rec = Recorder(broker.port, [f"{BASE}/event"])
    agent = Agent(agent_settings(broker.port, tmp_path / "state"))
    agent.start()
    try:
        assert wait_until(lambda: agent.link.connected)
        assert rec.wait_for(lambda r: r.payloads("/event"))  # the started event
        emit_from_threads(agent)
        assert rec.wait_for(lambda r: len(r.payloads("/event")) >= 601, 30), f"got {len(rec.payloads('/event'))}"
        events = rec.payloads("/event")
        assert seqs_in_order(events) == list(range(1, 602))  # in commit order, no gap
        for t in range(4):  # each thread's events in its own order
            assert [e["data"]["n"] for e in events if e["data"].get("t") == t] == list(range(150))
        assert agent.link.connects == 1  # a torn packet would have made mosquitto drop us
        assert wait_until(lambda: agent.outbox.depth == 0)
    finally:
        agent.stop()
        rec.close()


def test_sigkill_mid_stream_loses_nothing_committed(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state")
    rec = Recorder(broker.port, [f"{BASE}/event", f"{BASE}/status"], session="central-3")
    agent = AgentProcess(cfg).start()
    try:
        assert rec.wait_for(status_is("online"))
        from mqtt_helpers import publish as pub
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        sender = mqtt.Client(CallbackAPIVersion.VERSION2)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        for i in range(400):
            sender.publish(f"{BASE}/cmd", json.dumps({"id": f"k{i}", "command": "ping"}), qos=1)
        assert rec.wait_for(lambda r: len(r.payloads("/event")) >= 60, 20)
        agent.kill()  # SIGKILL, mid-stream
        sender.loop_stop()
        sender.disconnect()
        restarted = datetime.now(timezone.utc)
        agent = AgentProcess(cfg).start()
        assert rec.wait_for(lambda r: any(s["state"] == "online" and datetime.fromisoformat(s["ts"]) >= restarted
                                          for s in r.payloads("/status")), 20)
        pub(broker.port, f"{BASE}/cmd", '{"id":"final","command":"ping"}')
        assert rec.wait_for(lambda r: any(e["data"].get("id") == "final" for e in r.payloads("/event")), 20)
        events = rec.payloads("/event")
        seqs = seqs_in_order(events)
        # a SIGKILL is an unclean stop: the restart skips the seqs reserved before it and says so
        skipped = [e["data"] for e in events if e["data"].get("event") == "seq-skipped"]
        assert len(skipped) == 1
        explained = set(range(skipped[0]["first_seq"], skipped[0]["last_seq"] + 1))
        assert not explained & set(seqs), "a seq given again after the restart"
        assert sorted(set(seqs) | explained) == list(range(1, max(seqs) + 1)), "a committed event was lost"
        assert len({e["seq"]: e["id"] for e in events}) == len({e["id"] for e in events}), "a seq reused"
        started = [e for e in rec.payloads("/event") if e["data"].get("event") == "started"]
        assert len(started) == 2 and started[1]["seq"] > started[0]["seq"]
    finally:
        agent.kill()
        rec.close()


def test_boots_without_a_broker_and_delivers_when_it_appears(broker, tmp_path):
    rec = Recorder(broker.port, [f"{BASE}/event"], session="central-late")
    broker.stop()  # the central server's session is kept; the hall boots into an outage
    agent = Agent(agent_settings(broker.port, tmp_path / "state"))
    agent.link.max_delay = 1.0
    agent.start()
    try:
        for i in range(20):
            agent.emit(agent.events.agent("while-offline", {"n": i}))
        out = agent.dispatcher.handle(b'{"id":"local","command":"status"}')
        assert out.reply["result"]["connected"] is False and out.reply["result"]["outbox"]["depth"] == 21
        time.sleep(1.5)
        broker.start()
        assert rec.wait_for(lambda r: len({e["id"] for e in r.payloads("/event")}) >= 21, 20)
        assert seqs_in_order(rec.payloads("/event")) == list(range(1, 22))
    finally:
        agent.stop()
        rec.close()


def test_reconnect_backoff_grows_with_jitter_and_caps(tmp_path):
    agent = Agent(agent_settings(1, tmp_path / "state"))
    link = agent.link
    waits = []
    import hall_agent.link as link_module
    real_uniform = link_module.random.uniform
    link_module.random.uniform = lambda a, b: (w := real_uniform(a, b)) and waits.append(w) or w
    link._stopping.set()  # record the delays instead of sleeping them
    try:
        delays = []
        for _ in range(12):
            delays.append(link._delay)
            link._backoff()
    finally:
        link_module.random.uniform = real_uniform
    waits = [d * w for d, w in zip(delays, waits)]
    assert link.min_delay * 0.5 <= waits[0] <= link.min_delay * 1.5
    assert all(w <= link.max_delay * 1.5 for w in waits) and waits[-1] >= link.max_delay * 0.5
    assert len(set(round(w, 6) for w in waits)) > 6  # jittered, not lock-step
    agent.outbox.close()
