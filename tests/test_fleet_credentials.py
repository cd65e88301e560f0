"""The credentials command against a mosquitto with a password file (and
deploy/'s ACL): a rotation proven on a second connection and switched, a bad
one that changes nothing, a rollback, secrets kept out of the audit, and the
command refused unless [commands] allow_credentials."""

import json
import subprocess

import pytest

from fleet_helpers import AclBroker, Central, Supervised, hall_config
from hall_agent.agent import Agent
from hall_agent.config import load

BASE = "halls/zigong/ziliujing/zg-001"
pytestmark = pytest.mark.timeout(180)


def set_broker_password(broker, user, password):
    subprocess.run(["mosquitto_passwd", "-b", str(broker.passwd), user, password], check=True)
    broker.reload()


def events(central, name):
    return [e for e in central.payloads(f"{BASE}/event") if e["type"] == "agent" and e["data"]["event"] == name]


def online_count(central):
    return sum(p["state"] == "online" for p in central.payloads(f"{BASE}/status"))


def test_password_rotation_proven_switched_kept_for_rollback_and_a_bad_one_changes_nothing(tmp_path):
    broker = AclBroker(tmp_path / "mq", [("zigong", "ziliujing", "zg-001")]).start()
    pw = tmp_path / "mqtt-password"
    old = broker.secrets["zg-001"]
    pw.write_text(old + "\n")
    pw.chmod(0o600)
    cfg = hall_config(tmp_path / "config.toml", broker.port, tmp_path / "state", pw,
                      extra="[commands]\nallow_credentials = true\n")
    central = Central(broker.port, broker.secrets["central"])
    agent = Supervised(cfg, tmp_path / "agent.log").start()
    try:
        assert central.wait_for(lambda: online_count(central) == 1, 30), agent.output()
        # a password the broker does not know: the proof fails, nothing changes
        bad = central.command(BASE, "credentials", {"password": "not-the-one"}, timeout=30)
        assert bad["ok"] is False and bad["error"]["code"] == "failed"
        assert "refused the new credentials" in bad["error"]["message"] and "nothing changed" in bad["error"]["message"]
        assert pw.read_text() == old + "\n"
        assert not (tmp_path / "mqtt-password.new").exists() and not (tmp_path / "mqtt-password.old").exists()
        assert central.wait_for(lambda: events(central, "credentials-unchanged"), 10)

        # with one password per user, the centre sends the new one first (the hall keeps trying the
        # proof for wait_s), then sets it on the broker, whose reload drops the hall's old login
        cid = central.send(BASE, "credentials", {"password": "fresh-secret-2", "wait_s": 60})
        assert central.wait_for(lambda: (tmp_path / "mqtt-password.new").exists(), 15)
        set_broker_password(broker, "zg-001", "fresh-secret-2")
        assert central.wait_for(lambda: events(central, "credentials-switched"), 60), agent.output()
        assert central.wait_for(lambda: online_count(central) >= 2, 60), agent.output()  # back, with the new one
        assert pw.read_text() == "fresh-secret-2\n" and (tmp_path / "mqtt-password.old").read_text() == old + "\n"
        assert pw.stat().st_mode & 0o777 == 0o600 and not (tmp_path / "mqtt-password.new").exists()
        assert events(central, "credentials-switched")[0]["data"]["what"] == "password"
        replies = [r for r in central.payloads(f"{BASE}/cmd/reply") if r.get("id") == cid]
        assert all(r["ok"] and r["result"]["proven"] for r in replies)  # if it got out before the drop
        assert agent.starts == 1  # a password needs no restart

        # rollback: proven first too, so without waiting it fails while the broker has the new one ...
        back = central.command(BASE, "credentials", {"rollback": True}, timeout=30)
        assert back["ok"] is False and "nothing changed" in back["error"]["message"]
        assert pw.read_text() == "fresh-secret-2\n"
        # ... and works once the broker has the old one back
        central.send(BASE, "credentials", {"rollback": True, "wait_s": 60})
        assert central.wait_for(lambda: (tmp_path / "mqtt-password.new").exists(), 15)
        set_broker_password(broker, "zg-001", old)
        assert central.wait_for(lambda: len(events(central, "credentials-switched")) == 2, 60), agent.output()
        assert central.wait_for(lambda: online_count(central) >= 3, 60), agent.output()
        assert pw.read_text() == old + "\n" and (tmp_path / "mqtt-password.old").read_text() == "fresh-secret-2\n"

        # no secret in the audit stream (nor anywhere the centre can read)
        audits = lambda: [e for e in central.payloads(f"{BASE}/event") if e["type"] == "command"
                          and e["data"]["command"] == "credentials"]
        assert central.wait_for(lambda: len(audits()) == 4, 20)
        audits = audits()
        assert all(a["data"]["args"].get("password") in (None, "********") for a in audits)
        everything = b"".join(p for t, p, _ in central.messages if not t.endswith("/cmd"))  # but our own requests
        assert b"fresh-secret-2" not in everything and old.encode() not in everything and b"not-the-one" not in everything
        assert "fresh-secret-2" not in agent.output()
    finally:
        agent.stop()
        central.close()
        broker.stop()


def test_credentials_refused_unless_allowed_and_bad_arguments(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    cfg = hall_config(tmp_path / "config.toml", 1, tmp_path / "state", pw)
    agent = Agent(load(cfg), simulate=True, config_path=str(cfg))
    try:
        out = agent.dispatcher.handle(json.dumps({"id": "1", "command": "credentials",
                                                  "args": {"password": "p"}}).encode())
        assert out.reply["error"]["code"] == "refused" and "allow_credentials" in out.reply["error"]["message"]
        assert out.audit["args"] == {"password": "********"}
        agent.settings.commands.allow_credentials = True
        for args, code in (({}, "bad-args"), ({"password": "a\nb"}, "bad-args"), ({"cert_pem": "x"}, "bad-args"),
                           ({"password": "p", "rollback": True}, "bad-args"), ({"rollback": True}, "failed"),
                           ({"cert_pem": "-----BEGIN x", "key_pem": "-----BEGIN y"}, "refused")):
            out = agent.dispatcher.handle(json.dumps({"id": "1", "command": "credentials", "args": args}).encode())
            assert out.reply["error"]["code"] == code, (args, out.reply)
        assert pw.read_text() == "x\n"
    finally:
        agent.outbox.close()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_client_certificate_rotation_proven_then_restarted_onto_and_a_foreign_one_changes_nothing(tmp_path):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from fleet_helpers import EXIT_RESTART
    from mqtt_helpers import Broker, free_port, wait_until
    d = tmp_path / "pki"
    d.mkdir()
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={ca}",
                "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    for name, cn, ca in (("server", "localhost", "ca"), ("zg-001", "zg-001", "ca"), ("new", "zg-001", "ca"),
                         ("central", "central", "ca"), ("foreign", "zg-001", "other-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-days", "20", "-extfile", "ext.cnf", "-out", f"{name}.crt", cwd=d)
    port = free_port()
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"listener {port} 127.0.0.1\nallow_anonymous false\nrequire_certificate true\nuse_identity_as_username true\n"
        f"cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"))
    broker.port = port
    broker.start()
    etc = tmp_path / "etc"
    etc.mkdir()
    for src, dst in (("zg-001.crt", "client.crt"), ("zg-001.key", "client.key")):
        (etc / dst).write_bytes((d / src).read_bytes())
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[hall]
id = "zg-001"
city = "zigong"
branch = "ziliujing"

[mqtt]
host = "localhost"
port = {port}
tls = true
ca_file = "{d}/ca.crt"
cert_file = "{etc}/client.crt"
key_file = "{etc}/client.key"
drain_s = 1

[storage]
dir = "{tmp_path / 'state'}"

[commands]
allow_credentials = true
""")
    got = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="central-test", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(d / "ca.crt"), certfile=str(d / "central.crt"), keyfile=str(d / "central.key"))
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{BASE}/#", qos=1)
    c.on_message = lambda cl, u, m: got.append((m.topic, json.loads(m.payload) if m.payload else None))
    c.connect("localhost", port)
    c.loop_start()
    agent = Supervised(cfg, tmp_path / "agent.log").start()

    def ask(cid, args):
        c.publish(f"{BASE}/cmd", json.dumps({"id": cid, "command": "credentials", "args": args}), 1)
        assert wait_until(lambda: any(t.endswith("/cmd/reply") and p["id"] == cid for t, p in got), 30), \
            agent.output()
        return next(p for t, p in got if t.endswith("/cmd/reply") and p["id"] == cid)

    onlines = lambda: sum(1 for t, p in got if t == f"{BASE}/status" and p["state"] == "online")
    try:
        assert wait_until(lambda: onlines() == 1, 30), agent.output()
        pem = lambda n: (d / n).read_text()
        mismatched = ask("m", {"cert_pem": pem("new.crt"), "key_pem": pem("zg-001.key")})
        assert mismatched["error"]["code"] == "bad-args" and "not a certificate and its key" in mismatched["error"]["message"]
        foreign = ask("f", {"cert_pem": pem("foreign.crt"), "key_pem": pem("foreign.key")})
        assert foreign["ok"] is False and "nothing changed" in foreign["error"]["message"]
        assert (etc / "client.crt").read_text() == pem("zg-001.crt") and not (etc / "client.crt.new").exists()
        good = ask("g", {"cert_pem": pem("new.crt"), "key_pem": pem("new.key")})
        assert good["ok"] and good["result"]["switched"] == "certificate", good
        assert (etc / "client.crt").read_text() == pem("new.crt") and (etc / "client.key").read_text() == pem("new.key")
        assert (etc / "client.crt.old").read_text() == pem("zg-001.crt")
        assert (etc / "client.key").stat().st_mode & 0o777 == 0o600
        assert wait_until(lambda: onlines() == 2, 40), agent.output()  # restarted onto the new certificate
        assert agent.exits == [EXIT_RESTART]
        assert not any(b"PRIVATE KEY" in json.dumps(p).encode() for t, p in got if not t.endswith("/cmd"))
    finally:
        agent.stop()
        c.disconnect()
        c.loop_stop()
        broker.stop()
