"""A broker that refuses (issues 13.6 and 17.6): with MQTT 5 a PUBACK with a failure
reason keeps the row, is logged with topic and reason, retried with back-off and
held as a critical ``publish-refused`` alert; every SUBACK is checked and a refused
``cmd`` subscription is a critical ``subscribe-refused`` alert. Real mosquitto,
real ACL (it answers a denied publish with PUBACK 0x87 under MQTT 5)."""

import json
import shutil
import signal
import subprocess
import time

import pytest

from mqtt_helpers import AgentProcess, Broker, Recorder, free_port, wait_until, write_config

BASE = "halls/zigong/ziliujing/zg-001"
PANIC = """
[[inputs]]
id = "panic.1"
kind = "panic"
pin = 22
contact = "nc"
"""
WRITES = ("status", "event", "state/#", "telemetry/#", "health", "check/#", "cmd/reply")


def hall_acl(alerts: bool = False, cmd: bool = True) -> str:
    lines = ["user central", "topic readwrite halls/#", "", "user zg-001"]
    lines += [f"topic write {BASE}/{t}" for t in WRITES]
    lines += [f"topic read {BASE}/sim/#"]
    if cmd:
        lines.append(f"topic read {BASE}/cmd")
    if alerts:
        lines.append(f"topic readwrite {BASE}/alert/#")
    return "\n".join(lines) + "\n"


class AclBroker:
    def __init__(self, tmp_path, acl: str):
        if not shutil.which("mosquitto_passwd"):
            pytest.fail("mosquitto_passwd missing (package mosquitto)")
        self.dir = tmp_path / "acl-broker"
        self.dir.mkdir()
        self.acl = self.dir / "halls.acl"
        self.acl.write_text(acl)
        passwd = self.dir / "halls.passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "zg-001", "hall-pw"], check=True)
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), "central", "central-pw"], check=True)
        (tmp_path / "hall-pw").write_text("hall-pw\n")
        self.password_file = tmp_path / "hall-pw"
        port = free_port()
        self.broker = Broker(self.dir / "data", extra_conf=(
            f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {self.acl}\n"))
        self.broker.port = self.port = port
        self.broker.start()

    def reload(self, acl: str) -> None:
        self.acl.write_text(acl)
        self.broker.proc.send_signal(signal.SIGHUP)

    def stop(self):
        self.broker.stop()


def dynsec_client(username: str, password: str, role: str) -> dict:
    """A client entry of mosquitto's dynamic-security file (PBKDF2-SHA512, as the plugin checks it)."""
    import base64
    import hashlib
    import os
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return {"username": username, "password": base64.b64encode(digest).decode(),
            "salt": base64.b64encode(salt).decode(), "iterations": 101, "roles": [{"rolename": role}]}


class DynsecBroker:
    """mosquitto with its dynamic-security plugin: unlike its acl_file (which grants every
    subscription and filters deliveries), it answers a denied subscription with SUBACK 0x87
    (0x80 under 3.1.1), as EMQX and HiveMQ do."""

    PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"

    def __init__(self, tmp_path, hall_subscribe: list[str]):
        import os
        if not os.path.exists(self.PLUGIN):
            pytest.fail(f"{self.PLUGIN} missing (package mosquitto)")
        self.dir = tmp_path / "dynsec-broker"
        self.dir.mkdir()
        acl = lambda kind, topic: {"acltype": kind, "topic": topic, "allow": True, "priority": 0}
        conf = {"clients": [dynsec_client("zg-001", "hall-pw", "hall"), dynsec_client("central", "central-pw", "central")],
                "roles": [{"rolename": "hall", "acls": [acl("publishClientSend", f"{BASE}/#")] +
                           [acl("subscribePattern", f"{BASE}/{t}") for t in hall_subscribe]},
                          {"rolename": "central", "acls": [acl("publishClientSend", "halls/#"),
                                                           acl("subscribePattern", "halls/#")]}],
                "groups": [], "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                                                  "subscribe": False, "unsubscribe": True}}
        (self.dir / "dynsec.json").write_text(json.dumps(conf))
        (tmp_path / "hall-pw").write_text("hall-pw\n")
        self.password_file = tmp_path / "hall-pw"
        port = free_port()
        self.broker = Broker(self.dir / "data", extra_conf=(
            f"listener {port} 127.0.0.1\nallow_anonymous false\nplugin {self.PLUGIN}\n"
            f"plugin_opt_config_file {self.dir / 'dynsec.json'}\n"))
        self.broker.port = self.port = port
        self.broker.start()

    def stop(self):
        self.broker.stop()


def _central(port, topics):
    """A Recorder logged in as the central server."""
    import paho.mqtt.client as mqtt
    orig = mqtt.Client.connect

    def connect(self, *a, **kw):
        self.username_pw_set("central", "central-pw")
        return orig(self, *a, **kw)
    mqtt.Client.connect = connect
    try:
        return Recorder(port, topics)
    finally:
        mqtt.Client.connect = orig


def central_publish(port, topic, payload):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set("central", "central-pw")
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    try:
        c.publish(topic, payload, 1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def hall_config(tmp_path, port, password_file, protocol=5, extra=""):
    cfg = write_config(tmp_path / "c.toml", port, tmp_path / "state", PANIC + "[agent]\nhealth_interval_s = 1\n" + extra)
    return cfg.write_text(cfg.read_text().replace(
        "drain_s = 3", f'drain_s = 3\nprotocol = {protocol}\nusername = "zg-001"\npassword_file = "{password_file}"'
    )) and cfg


def alerts_on_event(rec, rule):
    return [e for e in rec.payloads("/event") if e["type"] == "alert" and e["data"]["rule"] == rule]


def test_refused_publish_is_kept_reported_and_retried_until_the_acl_allows_it(tmp_path):
    broker = AclBroker(tmp_path, hall_acl(alerts=False))
    rec = _central(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(hall_config(tmp_path, broker.port, broker.password_file), "--simulate").start()
    try:
        assert rec.wait_for(lambda r: any(s["state"] == "online" for s in r.payloads("/status")), 15), agent.output()
        central_publish(broker.port, f"{BASE}/sim/input/panic.1", "pressed")
        # the panic travels on event (allowed); its retained alert/ topic is refused
        assert rec.wait_for(lambda r: alerts_on_event(r, "panic"), 10)
        panic = alerts_on_event(rec, "panic")[0]
        assert rec.wait_for(lambda r: alerts_on_event(r, "publish-refused"), 10), "no publish-refused alert"
        refused = alerts_on_event(rec, "publish-refused")[0]
        assert refused["severity"] == "critical" and refused["moment"] == {"category": "system", "priority": 1}
        assert f"{BASE}/alert/panic/panic.1" in refused["data"]["message"]
        assert "Not authorized" in refused["data"]["message"]
        assert not [m for m in rec.messages if m.topic == f"{BASE}/alert/panic/panic.1"]
        # counted in health, the row kept in the outbox
        assert rec.wait_for(lambda r: any(h["data"].get("mqtt", {}).get("publish_refused", 0) >= 1
                                          for h in r.payloads("/health")), 10)
        h = [h for h in rec.payloads("/health") if h["data"]["mqtt"]["publish_refused"]][-1]["data"]
        assert f"{BASE}/alert/panic/panic.1" in h["mqtt"]["refused_topics"] and h["outbox"]["depth"] >= 1
        time.sleep(3)  # a few retries, refused again

        broker.reload(hall_acl(alerts=True))  # the operator fixes the ACL
        assert rec.wait_for(lambda r: [m for m in r.messages if m.topic == f"{BASE}/alert/panic/panic.1"], 30), \
            "the refused alert was not retried"
        delivered = json.loads([m for m in rec.messages if m.topic == f"{BASE}/alert/panic/panic.1"][0].payload)
        assert (delivered["id"], delivered["seq"]) == (panic["id"], panic["seq"])  # the kept row itself
        assert rec.wait_for(lambda r: any(a["data"]["state"] == "cleared"
                                          for a in alerts_on_event(r, "publish-refused")), 30)
        assert rec.wait_for(lambda r: any(h["data"]["outbox"]["depth"] == 0 and not h["data"]["mqtt"]["refused_topics"]
                                          for h in r.payloads("/health")[-3:]), 15)
        assert agent.terminate() == 0
        out = agent.output()
        lines = [l for l in out.splitlines() if f"refused a publication on {BASE}/alert/panic/panic.1" in l]
        assert len(lines) == 1 and "Not authorized" in lines[0], out[-3000:]  # logged once, not per retry
    finally:
        agent.kill()
        rec.close()
        broker.stop()


@pytest.mark.parametrize("protocol", [5, 311])
def test_refused_cmd_subscription_is_a_critical_alert(tmp_path, protocol):
    broker = DynsecBroker(tmp_path, hall_subscribe=["sim/#", "alert/#"])  # not cmd
    rec = _central(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(hall_config(tmp_path, broker.port, broker.password_file, protocol), "--simulate").start()
    try:
        assert rec.wait_for(lambda r: alerts_on_event(r, "subscribe-refused"), 15), agent.output()
        a = alerts_on_event(rec, "subscribe-refused")[0]
        assert a["severity"] == "critical" and a["moment"] == {"category": "system", "priority": 1}
        assert f"{BASE}/cmd" in a["data"]["message"]
        assert rec.wait_for(lambda r: any(h["data"].get("mqtt", {}).get("subscribe_refused", 0) >= 1
                                          for h in r.payloads("/health")), 10)
        assert rec.wait_for(lambda r: r.payloads("/alert/subscribe-refused/mqtt"), 10)  # retained too
        assert agent.terminate() == 0
        assert f"the broker refused the subscription to {BASE}/cmd" in agent.output()
    finally:
        agent.kill()
        rec.close()
        broker.stop()
