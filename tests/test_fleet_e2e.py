"""The desired/reported cycle through a real mosquitto with deploy/'s per-hall
ACL and password file: applied live, applied by a restart, rejected with key
paths, refused secrets and local sections, and a self-revert."""

import json
import tomllib
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleet_helpers import EXIT_RESTART, AclBroker, Central, Supervised, hall_config
from hall_agent.fleet import desired as dz

BASE = "halls/zigong/ziliujing/zg-001"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def hall(tmp_path):
    broker = AclBroker(tmp_path / "mq", [("zigong", "ziliujing", "zg-001")]).start()
    pw = tmp_path / "mqtt-password"
    pw.write_text(broker.secrets["zg-001"] + "\n")
    cfg = hall_config(tmp_path / "config.toml", broker.port, tmp_path / "state", pw, revert_after_s=4)
    central = Central(broker.port, broker.secrets["central"])
    agent = Supervised(cfg, tmp_path / "agent.log", env={"HALL_AGENT_SCHEDULE": "1"}).start()
    try:
        assert central.wait_for(lambda: any(p["state"] == "online" for p in central.payloads(f"{BASE}/status")),
                                30), agent.output()
        yield broker, central, agent, cfg
    finally:
        agent.stop()
        central.close()
        broker.stop()


def desired_text(cfg, **replace) -> str:
    """The hall's file as the centre would write it: without the local keys."""
    lines = [line for line in cfg.read_text().splitlines()
             if not line.startswith(("password_file", "revert_after_s", "[fleet]"))]
    text = "\n".join(lines) + "\n"
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def push(central, text, version):
    central.publish(f"{BASE}/config/desired", dz.payload(version, text), retain=True)
    return dz.sha256_text(text)


def final(central, sha, states=("applied", "rejected", "reverted"), timeout=60):
    ok = central.wait_for(lambda: any(r["sha256"] == sha and r["state"] in states
                                      for r in central.reported(BASE)), timeout)
    assert ok, central.reported(BASE)
    return next(r for r in reversed(central.reported(BASE)) if r["sha256"] == sha and r["state"] in states)


def test_new_hours_are_applied_live_and_the_schedule_changes_at_once(hall):
    broker, central, agent, cfg = hall
    assert central.command(BASE, "status")["result"]["scheduled"] == []  # every day closed
    tz = ZoneInfo("Asia/Shanghai")
    start = (datetime.now(tz) + timedelta(hours=6)).hour
    start = 1 if start >= 22 else start  # at least two hours away: no check fires during the test
    hours = "".join(f'{d} = "{start:02d}:00-{start + 1:02d}:00"\n' for d in
                    ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
    text = desired_text(cfg)
    text = text[:text.index("[hours]")] + "[hours]\n" + hours + 'holidays = ""\n'
    before = cfg.read_text()
    sha = push(central, text, "v2")
    report = final(central, sha)
    assert report["state"] == "applied" and report["errors"] == [] and report["version"] == "v2"
    assert report["live"] == ["hours"]
    assert [r["state"] for r in central.reported(BASE)] == ["applying", "applied"]
    jobs = central.command(BASE, "status")["result"]["scheduled"]
    assert jobs and all(j.startswith("opening@") or j.startswith("closing@") for j in jobs)
    opening = [j for j in jobs if j.startswith("opening@")]
    assert opening and all(datetime.fromisoformat(j.split("@")[1]).astimezone(tz).strftime("%H:%M")
                           == f"{start - 1:02d}:30" for j in opening)  # 30 min lead
    on_disk = tomllib.loads(cfg.read_text())
    assert on_disk["hours"]["monday"] == f"{start:02d}:00-{start + 1:02d}:00"
    assert on_disk["mqtt"]["password_file"] and on_disk["fleet"] == {"revert_after_s": 4}  # local keys kept
    assert (cfg.parent / "config.toml.prev").read_text() == before
    assert agent.starts == 1 and agent.exits == []  # no restart
    fleet = central.command(BASE, "status")["result"]["fleet"]
    assert fleet["version"] == "v2" and fleet["sha256"] == sha and fleet["state"] == "applied"


def test_an_invalid_file_is_rejected_with_key_paths_and_nothing_changes(hall):
    broker, central, agent, cfg = hall
    before = cfg.read_text()
    text = desired_text(cfg, **{'monday = "closed"': 'monday = "18:00-09:00"'}) + \
        '\n[[sensors]]\nid = "env"\ndriver = "sht3x"\naddress = 0x99\n'
    report = final(central, push(central, text, "bad-1"))
    assert report["state"] == "rejected"
    assert report["errors"] == ["hours.monday: '18:00-09:00' closes before it opens",
                                "sensors[0].address: 0x99 is not a 7-bit I2C address (0x08-0x77)"]
    assert cfg.read_text() == before and not (cfg.parent / "config.toml.prev").exists()
    assert central.command(BASE, "status")["result"]["sensors"] == {}
    assert agent.exits == []


def test_secrets_and_local_sections_are_refused_with_their_key_paths(hall):
    broker, central, agent, cfg = hall
    before = cfg.read_text()
    text = desired_text(cfg, **{'username = "zg-001"': 'username = "zg-001"\npassword = "guessme"'}) + \
        "\n[commands]\nallow_reset = true\n\n[fleet]\nrevert_after_s = 100000\n"
    report = final(central, push(central, text, "sneaky"))
    assert report["state"] == "rejected"
    assert [e.split(":")[0] for e in report["errors"]] == ["mqtt.password", "commands.allow_reset",
                                                            "fleet.revert_after_s"]
    assert "guessme" not in json.dumps(central.reported(BASE))
    assert cfg.read_text() == before and agent.exits == []


def test_a_change_that_needs_a_restart_is_applied_after_the_agent_restarts_itself(hall):
    broker, central, agent, cfg = hall
    text = desired_text(cfg) + "\n[agent]\nhealth_interval_s = 7\n"
    sha = push(central, text, "v3")
    report = final(central, sha, timeout=60)
    assert report["state"] == "applied", agent.output()
    applying = next(r for r in central.reported(BASE) if r["state"] == "applying")
    assert applying["restart"] == ["agent"]
    assert agent.exits == [EXIT_RESTART] and agent.starts == 2
    assert tomllib.loads(cfg.read_text())["agent"]["health_interval_s"] == 7
    statuses = [p for p in central.payloads(f"{BASE}/status")]
    assert [p["state"] for p in statuses][-3:] == ["online", "offline", "online"]
    assert statuses[-2]["reason"] == "shutdown"  # a clean stop, not a lost connection
    # the retained desired message arrives again at every connect: not applied twice
    assert central.command(BASE, "ping")["ok"]
    assert agent.starts == 2 and [r["state"] for r in central.reported(BASE)].count("applied") == 1


def test_a_file_that_cannot_reach_the_broker_reverts_itself(hall):
    broker, central, agent, cfg = hall
    before = cfg.read_text()
    text = desired_text(cfg, **{'host = "127.0.0.1"': 'host = "127.0.0.2"'})  # nobody listens there
    sha = push(central, text, "v4")
    report = final(central, sha, states=("reverted",), timeout=90)
    assert report["errors"] == ["no connection to the broker within 4 s of applying it"], agent.output()
    assert agent.exits == [EXIT_RESTART, EXIT_RESTART] and agent.starts == 3
    assert cfg.read_text() == before
    assert 'host = "127.0.0.2"' in (cfg.parent / "config.toml.failed").read_text()
    assert [r["state"] for r in central.reported(BASE) if r["sha256"] == sha] == ["applying", "reverted"]
    # the retained desired message is handed over again: a reverted one is not tried again
    assert central.command(BASE, "ping")["ok"] and agent.starts == 3


def test_a_new_camera_probe_is_applied_live_and_a_new_relay_needs_a_restart(tmp_path):
    import socket
    broker = AclBroker(tmp_path / "mq", [("zigong", "ziliujing", "zg-001")]).start()
    pw = tmp_path / "mqtt-password"
    pw.write_text(broker.secrets["zg-001"] + "\n")
    cfg = hall_config(tmp_path / "config.toml", broker.port, tmp_path / "state", pw)
    central = Central(broker.port, broker.secrets["central"])
    camera = socket.socket()
    camera.bind(("127.0.0.1", 0))
    camera.listen(16)
    agent = Supervised(cfg, tmp_path / "agent.log", simulate=False).start()  # a real TCP probe
    try:
        assert central.wait_for(lambda: any(p["state"] == "online" for p in central.payloads(f"{BASE}/status")),
                                30), agent.output()
        text = desired_text(cfg) + (f'\n[[equipment]]\nid = "cam.1"\nname = "camera"\n'
                                    f'probe = "tcp://127.0.0.1:{camera.getsockname()[1]}"\nprobe_interval_s = 1\n')
        report = final(central, push(central, text, "cam"))
        assert report["state"] == "applied" and report["live"] == ["equipment"], report
        assert central.wait_for(lambda: any(p["data"]["reachable"] for p in central.payloads(f"{BASE}/state/cam.1")),
                                15), agent.output()
        assert agent.starts == 1
        status = central.command(BASE, "status")["result"]
        assert status["equipment"]["cam.1"]["reachable"] is True
        relay = text + '\n[[equipment]]\nid = "fan.1"\nrelay_pin = 23\n'
        push(central, relay, "relay")
        applying = central.wait_for(lambda: any(r["version"] == "relay" and r["state"] == "applying"
                                                for r in central.reported(BASE)), 30)
        assert applying
        assert next(r for r in central.reported(BASE) if r["version"] == "relay")["restart"] == ["equipment"]
    finally:
        agent.stop()
        camera.close()
        central.close()
        broker.stop()


def test_alarm_handling_numbers_are_applied_live_maintenance_windows_by_a_restart(hall):
    broker, central, agent, cfg = hall
    text = desired_text(cfg) + "\n[alerts]\nescalate_branch_s = 30\nescalate_city_s = 300\n"
    report = final(central, push(central, text, "alerts"))
    assert report["state"] == "applied" and report["live"] == ["alerts"] and agent.starts == 1
    text += '\n[[maintenance]]\nrule = "*"\nsource = "*"\nfrom = "02:00"\nto = "03:00"\nreason = "cleaning"\n'
    push(central, text, "cleaning")
    assert central.wait_for(lambda: any(r["version"] == "cleaning" and r["state"] == "applying"
                                        for r in central.reported(BASE)), 30)
    assert next(r for r in central.reported(BASE) if r["version"] == "cleaning")["restart"] == ["maintenance"]


def test_the_alerts_applier_changes_the_alarm_book_policy(tmp_path):
    from hall_agent.agent import Agent
    from hall_agent.config import load
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    cfg = hall_config(tmp_path / "config.toml", 1, tmp_path / "state", pw)
    agent = Agent(load(cfg), simulate=True, config_path=str(cfg))
    try:
        old = agent.settings
        new = old.model_copy(update={"alerts": old.alerts.model_copy(update={"escalate_branch_s": 30.0,
                                                                               "flap_count": 6})})
        agent.fleet.appliers["alerts"](old, new)
        p = agent.alarms.book.policy
        assert p.escalate_branch_s == 30.0 and p.flap_count == 6 and p.escalate_city_s == old.alerts.escalate_city_s
        assert agent.settings.alerts.flap_count == 6
    finally:
        agent.outbox.close()
