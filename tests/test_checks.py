"""Opening and closing checks against the emulators: each item kind passing
and failing, the report's JSON shape, the CLI's exit codes."""

import json
import subprocess
import sys
import time

import jsonschema
import pytest

from hall_agent.agent import Agent
from hall_agent.config import validate
from hall_agent.devices import ProbeResult
from mqtt_helpers import CLOSED_HOURS, AgentProcess, Recorder, publish, wait_until, write_config
from test_schema import SCHEMA

CHECK = jsonschema.Draft202012Validator({**SCHEMA["$defs"]["check"], "$defs": SCHEMA["$defs"]})

HALL = {
    "hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
    "checks": {"settle_s": 0.2},
    "sensors": [{"id": "env", "driver": "sht3x", "interval_s": 0.2}],
    "inputs": [{"id": "door.side", "kind": "door", "pin": 17, "contact": "nc", "bounce_ms": 0},
               {"id": "panic.1", "kind": "panic", "pin": 22, "contact": "nc"}],
    "printers": [{"id": "printer.queue", "port": "/dev/ttyUSB1", "poll_s": 60, "timeout_s": 0.3}],
    "equipment": [{"id": "kiosk.1", "probe": "tcp://192.168.10.21:80", "relay_pin": 5, "power": "auto"},
                  {"id": "display.q", "probe": "tcp://192.168.10.30:80", "required": False},
                  {"id": "nvr.1", "probe": "tcp://192.168.10.40:554", "relay_pin": 13, "power": "manual"}],
}


@pytest.fixture
def agent(tmp_path):
    a = Agent(validate({**HALL, "storage": {"dir": str(tmp_path / "state")}}), simulate=True)
    a.devices.start()
    a.sensors.start()
    assert wait_until(lambda: a.sensors.runners["env"].last_ok_at is not None, 5)
    yield a
    a.sensors.stop()
    a.devices.stop()
    a.outbox.close()
    a.hardware.close()


def items(report):
    return {i.id: (i.result, i.detail) for i in report.items}


def test_everything_passes(agent):
    report = agent.run_check("opening", publish=False)
    assert report.result == "pass", items(report)
    assert set(items(report)) == {"env", "door.side", "panic.1", "printer.queue", "kiosk.1", "display.q", "nvr.1"}
    CHECK.validate(report.as_dict())
    assert agent.devices.power("kiosk.1") == "on"  # auto equipment switched on for opening


def test_each_item_kind_failing(agent):
    sim = agent.hardware
    sim.devices["env"].fault = "crc"
    time.sleep(0.3)
    runner = agent.sensors.runners["env"]
    runner.last_ok_at -= 60  # its last good read is now stale
    sim.control_input("door.side", "open", agent.devices)
    sim.control_input("panic.1", "pressed", agent.devices)
    sim.devices["printer.queue"].set(paper="end")
    sim.equipment_up["kiosk.1"] = False
    sim.equipment_up["display.q"] = False
    report = agent.run_check("opening", publish=False)
    got = items(report)
    assert report.result == "fail"
    assert got["env"][0] == "fail" and "CRC" in got["env"][1]
    assert got["door.side"] == ("fail", "door open")
    assert got["panic.1"][0] == "fail"
    assert got["printer.queue"] == ("fail", "out of paper")
    assert got["kiosk.1"][0] == "fail" and got["display.q"][0] == "warn"  # not required: a warning
    assert got["nvr.1"][0] == "pass"
    CHECK.validate(report.as_dict())


def test_printer_near_end_and_silent(agent):
    printer = agent.hardware.devices["printer.queue"]
    printer.set(paper="near_end")
    report = agent.run_check("opening", publish=False)
    assert items(report)["printer.queue"][0] == "warn" and report.result == "warn"
    printer.set(paper="ok", responding=False)
    assert items(agent.run_check("opening", publish=False))["printer.queue"][0] == "fail"


def test_implausible_sensor_value_fails(agent):
    agent.hardware.devices["env"].set(temperature_c=120.0)
    time.sleep(0.4)
    result, detail = items(agent.run_check("opening", publish=False))["env"]
    assert result == "fail" and "implausible" in detail


def test_closing_switches_auto_equipment_off_and_verifies(agent):
    report = agent.run_check("closing", publish=False)
    got = items(report)
    assert agent.devices.power("kiosk.1") == "off" and agent.devices.power("nvr.1") == "on"
    assert got["kiosk.1"] == ("pass", "off") and "nvr.1" not in got and "env" not in got
    assert report.result == "pass"
    agent.devices.equipment.probe_fn = lambda url, t: ProbeResult(True, 1.0, "connected")  # a relay that stuck
    assert items(agent.run_check("closing", publish=False))["kiosk.1"][0] == "warn"


def test_cli_exit_codes_and_json(tmp_path):
    ok = tmp_path / "ok.toml"
    ok.write_text('[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[checks]\nsettle_s = 0.5\n'
                  f'[storage]\ndir="{tmp_path / "s1"}"\n'
                  '[[inputs]]\nid="door.side"\nkind="door"\npin=17\ncontact="nc"\n')
    r = subprocess.run([sys.executable, "-m", "hall_agent", "check", "opening", "-c", str(ok), "--simulate",
                        "--no-publish", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    CHECK.validate(data)
    assert data["result"] == "pass" and data["items"] == [{"id": "door.side", "result": "pass", "detail": "door closed"}]
    bad = tmp_path / "bad.toml"  # real hardware: no /dev/i2c-7 on this machine
    bad.write_text('[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[checks]\nsettle_s = 0.5\n'
                   f'[storage]\ndir="{tmp_path / "s2"}"\n'
                   '[[sensors]]\nid="env"\ndriver="sht3x"\nbus=7\n')
    r = subprocess.run([sys.executable, "-m", "hall_agent", "check", "opening", "-c", str(bad), "--no-publish"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "FAIL" in r.stdout and "env" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hall_agent", "check", "lunch", "-c", str(ok)],
                       capture_output=True, text=True)
    assert r.returncode == 2


def test_check_command_and_retained_report(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state",
                       CLOSED_HOURS + "[checks]\nsettle_s = 0.3\n[[inputs]]\nid='door.side'\nkind='door'\npin=17\ncontact='nc'\n")
    base = "halls/zigong/ziliujing/zg-001"
    rec = Recorder(broker.port, [f"{base}/#"])
    agent = AgentProcess(cfg, "--simulate").start()
    try:
        assert rec.wait_for(lambda r: r.payloads("/state/door.side"), 15)
        publish(broker.port, f"{base}/sim/input/door.side", "open")
        assert rec.wait_for(lambda r: r.payloads("/state/door.side")[-1]["data"]["state"] == "open", 5)
        publish(broker.port, f"{base}/cmd", '{"id":"c1","command":"check","args":{"kind":"opening"}}')
        publish(broker.port, f"{base}/cmd", '{"id":"p1","command":"ping"}')  # not held up by the check
        assert rec.wait_for(lambda r: any(x["id"] == "c1" for x in r.payloads("/cmd/reply")), 15)
        replies = [x["id"] for x in rec.payloads("/cmd/reply")]
        assert replies.index("p1") < replies.index("c1")
        report = next(x for x in rec.payloads("/cmd/reply") if x["id"] == "c1")["result"]
        assert report["result"] == "fail"
        assert rec.wait_for(lambda r: r.payloads("/check/opening"), 5)
        envelope = rec.payloads("/check/opening")[0]
        assert envelope["type"] == "check" and envelope["data"] == report
        assert rec.wait_for(lambda r: r.payloads("/alert/check-failed/opening"), 5)
    finally:
        agent.kill()
        rec.close()


def test_cli_check_asks_the_running_agent(broker, tmp_path):
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state",
                       CLOSED_HOURS + "[checks]\nsettle_s = 0.2\n[[inputs]]\nid='door.side'\nkind='door'\npin=17\ncontact='nc'\n")
    rec = Recorder(broker.port, ["halls/zigong/ziliujing/zg-001/#"])
    agent = AgentProcess(cfg, "--simulate").start()  # holds the state folder's lock
    try:
        assert rec.wait_for(lambda r: r.payloads("/state/door.side"), 15)
        r = subprocess.run([sys.executable, "-m", "hall_agent", "check", "closing", "-c", str(cfg), "--json"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        CHECK.validate(data)
        assert data["check"] == "closing" and data["items"] == [{"id": "door.side", "result": "pass",
                                                                  "detail": "door closed"}]
        assert rec.wait_for(lambda r: any(c["data"]["check"] == "closing" for c in r.payloads("/check/closing")), 5)
        commands = [e["data"] for e in rec.payloads("/event") if e["type"] == "command"]
        assert commands and commands[-1]["command"] == "check"  # it went through the agent
    finally:
        agent.kill()
        rec.close()
