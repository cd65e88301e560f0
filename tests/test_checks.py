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
    # the inputs' debounce and min_pulse_ms timers have run (the check no longer waits settle_s when
    # nothing is switched on: the auto kiosk is on already)
    assert wait_until(lambda: agent.devices.inputs["panic.1"].state == "alarm", 5)
    assert wait_until(lambda: agent.devices.inputs["door.side"].state == "open", 5)
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


def test_one_check_at_a_time_a_second_request_is_busy_at_once(tmp_path):
    """40 check commands do not make 40 checks switching relays: while one runs, the others
    get `busy` at once (a scheduled check waits for it instead)."""
    import threading
    from hall_agent.checks import CheckBusy
    a = Agent(validate({**HALL, "checks": {"settle_s": 1.0}, "storage": {"dir": str(tmp_path / "state")},
                        "commands": {"allow_power": True}}), simulate=True)
    settling, release = threading.Event(), threading.Event()
    a.checks.sleep = lambda seconds: (settling.set(), release.wait(10))  # the settle time ends when we say
    a.devices.start()
    try:
        a.devices.set_power("kiosk.1", False)
        first = threading.Thread(target=a.run_check, args=("opening",), kwargs={"publish": False})
        first.start()
        assert settling.wait(5)
        replies = [a.dispatcher.handle(json.dumps({"id": f"c{i}", "command": "check",
                                                   "args": {"kind": "closing"}}).encode()).reply
                   for i in range(40)]
        assert all(not r["ok"] and r["error"]["code"] == "busy" for r in replies), replies[0]
        assert first.is_alive()  # answered while the opening check still settles: at once, not after it
        with pytest.raises(CheckBusy):
            a.run_check("closing", publish=False, wait=False)
        release.set()
        first.join(10)
        assert a.devices.power("kiosk.1") == "on"  # no closing check switched it off under the opening
        assert a.run_check("closing", publish=False, wait=False).check == "closing"  # free again
    finally:
        a.devices.stop()
        a.outbox.close()
        a.hardware.close()


def test_a_remote_check_switches_relays_only_where_allow_power(tmp_path):
    a = Agent(validate({**HALL, "storage": {"dir": str(tmp_path / "state")}}), simulate=True)  # allow_power false
    a.devices.start()
    try:
        a.devices.set_power("kiosk.1", False)  # last night's closing switched it off
        reply = a.dispatcher.handle(b'{"id":"c1","command":"check","args":{"kind":"opening"}}').reply
        assert reply["ok"], reply
        report = reply["result"]
        CHECK.validate(report)
        assert a.devices.power("kiosk.1") == "off"  # the relay was not touched
        assert report["switched"] is False and "allow_power" in report["note"] and "kiosk.1" in report["note"]
        kiosk = next(i for i in report["items"] if i["id"] == "kiosk.1")
        assert kiosk["result"] == "warn" and "not switched on" in kiosk["detail"]
        local = a.run_check("opening", publish=False)  # the scheduled (or local) check switches
        assert a.devices.power("kiosk.1") == "on" and local.switched
    finally:
        a.devices.stop()
        a.outbox.close()
        a.hardware.close()


def test_equipment_just_switched_on_is_reachable_null_until_probed_after_settle(agent):
    """Last night's probe (off: unreachable) is not published with power on: no false
    equipment-unreachable raised and cleared by every opening check."""
    seen = []
    agent.devices.listeners.append(lambda kind, source, data: seen.append((source, dict(data)))
                                   if kind == "equipment" else None)
    agent.run_check("closing", publish=False)
    assert agent.devices.equipment.results["kiosk.1"].reachable is False  # off: no answer
    seen.clear()
    report = agent.run_check("opening", publish=False)
    kiosk = [d for s, d in seen if s == "kiosk.1"]
    assert kiosk[0]["power"] == "on" and kiosk[0]["reachable"] is None
    assert all(d["reachable"] is not False for d in kiosk)
    assert items(report)["kiosk.1"][0] == "pass" and kiosk[-1]["reachable"] is True
    # the background monitor does not probe it while it settles
    agent.run_check("closing", publish=False)
    agent.devices.set_power("kiosk.1", True, settle_s=60)
    assert agent.devices.equipment._probe(agent.devices.equipment.items[0]) is None


def test_no_settle_wait_when_nothing_was_switched(tmp_path):
    slept = []
    a = Agent(validate({**HALL, "checks": {"settle_s": 20}, "storage": {"dir": str(tmp_path / "state")}}),
              simulate=True)
    a.checks.sleep = slept.append
    a.devices.start()
    try:
        a.devices.set_power("kiosk.1", False)
        a.run_check("opening", publish=False)
        assert sum(slept) == 20  # kiosk.1 was switched on
        a.run_check("opening", publish=False)
        assert sum(slept) == 20  # already on: a check in seconds
        no_auto = Agent(validate({**HALL, "equipment": HALL["equipment"][1:], "checks": {"settle_s": 20},
                                  "storage": {"dir": str(tmp_path / "s2")}}), simulate=True)
        no_auto.checks.sleep = slept.append
        try:
            no_auto.run_check("opening", publish=False)
        finally:
            no_auto.outbox.close()
            no_auto.hardware.close()
        assert sum(slept) == 20
    finally:
        a.devices.stop()
        a.outbox.close()
        a.hardware.close()


def test_no_publish_touches_neither_the_outbox_nor_the_state(tmp_path):
    state = tmp_path / "s"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[checks]\nsettle_s = 0.2\n'
                   f'[storage]\ndir="{state}"\n'
                   '[[inputs]]\nid="door.side"\nkind="door"\npin=17\n')  # contact no: reads open in simulation
    r = subprocess.run([sys.executable, "-m", "hall_agent", "check", "opening", "-c", str(cfg), "--simulate",
                        "--no-publish", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    assert not state.exists() or not any(state.iterdir()), list(state.iterdir())


def test_a_local_check_that_passes_clears_check_failed(tmp_path, broker):
    base = "halls/zigong/ziliujing/zg-001"
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state",
                       "[checks]\nsettle_s = 0.2\n[[inputs]]\nid='door.side'\nkind='door'\npin=17\ncontact='nc'\n")
    (tmp_path / "state").mkdir(parents=True, exist_ok=True)
    (tmp_path / "state" / "alerts.json").write_text(json.dumps([{
        "rule": "check-failed", "source": "opening", "severity": "warning", "category": "internal", "priority": 1,
        "message": "opening check failed: door.side", "value": 1, "threshold": 0,
        "raised_at": "2026-11-30T08:00:01.000+08:00"}]))
    rec = Recorder(broker.port, [f"{base}/#"])
    try:
        r = subprocess.run([sys.executable, "-m", "hall_agent", "check", "opening", "-c", str(cfg), "--simulate"],
                           capture_output=True, text=True, timeout=60,
                           env={**__import__("os").environ, "HALL_AGENT_SIM_DAY": "0"})
        assert r.returncode == 0, r.stdout + r.stderr
        assert rec.wait_for(lambda r: any(p.get("data", {}).get("state") == "cleared"
                                          for p in r.payloads("/alert/check-failed/opening")), 10)
        from hall_agent.alerts import PREFIX
        from hall_agent.outbox import Outbox
        box = Outbox(tmp_path / "state" / "outbox.sqlite3")
        try:
            assert box.state_items(PREFIX) == {}  # the service's next start does not restore it
        finally:
            box.close()
    finally:
        rec.close()


def test_a_probe_in_flight_when_the_equipment_is_switched_on_is_not_published():
    """The background probe of equipment that is off takes up to its timeout (no answer). If the
    opening check switches it on meanwhile, that probe's "unreachable" is from before the switch:
    it must not become the result of equipment now on (a false equipment-unreachable)."""
    import threading
    from types import SimpleNamespace
    from hall_agent.devices.equipment import EquipmentMonitor
    started, release = threading.Event(), threading.Event()
    answers = []

    def slow_probe(url, timeout_s):
        started.set()
        release.wait(5)
        return ProbeResult(False, None, "no answer within 3 s")  # it was off when probed
    mon = EquipmentMonitor([SimpleNamespace(id="kiosk.1", probe="tcp://127.0.0.1:9")],
                           lambda eid, result, changed: answers.append(result), probe_fn=slow_probe)
    background = threading.Thread(target=mon._probe, args=(mon.items[0],))
    background.start()
    assert started.wait(5)
    mon.hold("kiosk.1", 20.0)  # switched on while that probe waits for its timeout
    release.set()
    background.join(5)
    assert "kiosk.1" not in mon.results and answers == []
    # the first probe after settling (here forced, as the check does) is the one that counts
    mon.probe_fn = lambda url, timeout_s: ProbeResult(True, 1.0, "connected")
    assert mon.probe_now("kiosk.1").reachable is True and mon.results["kiosk.1"].reachable is True


def test_no_publish_while_the_service_runs_is_refused_not_asked_of_the_service(tmp_path, broker):
    """The service holds the state folder's lock: a check asked of it is published (report,
    check-failed). ``--no-publish`` must not become that: it is refused, and nothing is sent."""
    import fcntl
    base = "halls/zigong/ziliujing/zg-001"
    cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", "[checks]\nsettle_s = 0.2\n")
    (tmp_path / "state").mkdir(parents=True, exist_ok=True)
    service = open(tmp_path / "state" / "agent.lock", "a")  # as the running service holds it
    fcntl.flock(service, fcntl.LOCK_EX | fcntl.LOCK_NB)
    rec = Recorder(broker.port, [f"{base}/#"])
    try:
        r = subprocess.run([sys.executable, "-m", "hall_agent", "check", "opening", "-c", str(cfg), "--no-publish"],
                           capture_output=True, text=True, timeout=60, env=AgentProcess(cfg).env)
        assert r.returncode == 2 and "--no-publish" in r.stderr and "service" in r.stderr, (r.returncode, r.stderr)
        time.sleep(0.5)
        assert not any(m.topic.endswith("/cmd") for m in rec.messages), [m.topic for m in rec.messages]
    finally:
        rec.close()
        service.close()
