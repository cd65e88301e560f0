"""hall-agent doctor: each problem found, with its fix; exit 1 on any."""

import os
import subprocess
import sys
from pathlib import Path

from hall_agent import doctor
from hall_agent.config import validate
from mqtt_helpers import free_port


def settings(tmp_path, **mqtt):
    return validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                     "mqtt": {"host": "127.0.0.1", **mqtt}, "storage": {"dir": str(tmp_path / "s")},
                     "sensors": [{"id": "env", "driver": "sht3x", "bus": 9}],
                     "printers": [{"id": "printer.q", "port": str(tmp_path / "ttyNONE"), "timeout_s": 0.2}]})


def test_findings_each_with_a_fix(broker, tmp_path):
    s = settings(tmp_path, port=broker.port)
    fake_dev = tmp_path / "dev"
    fake_dev.mkdir()
    (fake_dev / "i2c-9").write_text("")  # the bus "is there": the sensor on it is asked (and does not answer)
    (sensor,) = [f for f in doctor.check_sensors(s, doctor_hardware(s, tmp_path), dev_root=fake_dev)
                 if f.what == "sensor env"]
    assert not sensor.ok and "did not acknowledge" in sensor.detail and "wiring" in sensor.fix
    bus = [f for f in doctor.check_sensors(s, doctor_hardware(s, tmp_path)) if f.what == "I2C bus 9"][0]
    assert not bus.ok and "do_i2c" in bus.fix
    (printer,) = doctor.check_printers(s)
    assert not printer.ok and "cannot open" in printer.detail
    (ok,) = doctor.check_broker(s)
    assert ok.ok and "connected" in ok.detail
    (down,) = doctor.check_broker(settings(tmp_path, port=free_port()), timeout_s=2)
    assert not down.ok and "broker runs" in down.fix


def doctor_hardware(s, tmp_path):
    from hall_agent.hardware import Hardware
    return Hardware(s, tmp_path / "s")


def test_secrets_permissions(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[mqtt]\nusername="u"\npassword="p"\n')
    cfg.chmod(0o644)
    from hall_agent.config import load
    (f,) = doctor.check_config_file(load(cfg), cfg)
    assert not f.ok and "world-readable" in f.detail
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o644)
    cfg.write_text(f'[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[mqtt]\nusername="u"\npassword_file="{pw}"\n')
    findings = doctor.check_config_file(load(cfg), cfg)
    assert findings[0].ok and not findings[1].ok and findings[1].fix == f"chmod 600 {pw}"
    pw.chmod(0o600)
    assert all(f.ok for f in doctor.check_config_file(load(cfg), cfg))


def test_cli_exits_1_with_problems(broker, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[mqtt]\nhost="127.0.0.1"\n'
                   f'port={broker.port}\n[storage]\ndir="{tmp_path / "s"}"\n[[sensors]]\nid="env"\ndriver="sht3x"\nbus=9\n')
    r = subprocess.run([sys.executable, "-m", "hall_agent", "doctor", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "PROBLEM  I2C bus 9: /dev/i2c-9 missing (1 sensor on it not checked: env)" \
        in r.stdout and "ok       broker" in r.stdout
    assert "sensor env" not in r.stdout  # the bus is said once, not blamed on each sensor


# --- the service under systemd (issue 22: items 2, 4 and 6) ---------------------------------

def shows(**props):
    return lambda unit, *names: {"LoadState": "loaded", **props}


def test_a_failed_unit_is_reported_with_reset_failed():
    (f,) = doctor.check_service(shows(ActiveState="failed", SubState="failed", Result="start-limit-hit"))
    assert not f.ok and "start-limit-hit" in f.detail
    assert "systemctl reset-failed hall-agent && sudo systemctl start hall-agent" in f.fix
    (loop,) = doctor.check_service(shows(ActiveState="activating", SubState="auto-restart", NRestarts="7"))
    assert not loop.ok and "7 times" in loop.detail and "journalctl" in loop.fix
    (ok,) = doctor.check_service(shows(ActiveState="active", SubState="running"))
    assert ok.ok
    assert doctor.check_service(lambda unit, *names: None) == []  # no systemd, or no unit: nothing to say


def test_storage_outside_the_state_directory_needs_the_drop_in(tmp_path):
    (f,) = doctor.check_service_storage(Path("/srv/hall-data"), shows(ReadWritePaths=""))
    assert not f.ok and "read-only to hall-agent.service" in f.detail and "install.sh again" in f.fix
    (ok,) = doctor.check_service_storage(Path("/srv/hall-data/x"), shows(ReadWritePaths="/opt/y -/srv/hall-data"))
    assert ok.ok
    assert doctor.check_service_storage(Path("/var/lib/hall-agent"), shows(ReadWritePaths="")) == []
    assert doctor.check_service_storage(Path("/srv/x"), lambda unit, *names: None) == []


def test_a_device_the_service_cannot_open_is_a_permission_problem(tmp_path):
    """Plain Debian: /dev/i2c-1 root:root 0600. Not 'absent': a permission problem, with the fix."""
    import grp
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "i2c-1").write_text("")
    (dev / "i2c-1").chmod(0o600)
    s = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                  "sensors": [{"id": "env", "driver": "sht3x", "bus": 1}]})
    (f,) = doctor.check_device_permissions(s, dev)
    assert not f.ok and "cannot open it (EACCES)" in f.detail and "udev" in f.fix
    try:
        gid = grp.getgrnam("i2c").gr_gid
    except KeyError:
        gid = None
    if os.geteuid() == 0 and gid is not None:  # root (CI): give it to the group, as the udev rule does
        os.chown(dev / "i2c-1", 0, gid)
        (dev / "i2c-1").chmod(0o660)
        assert doctor.check_device_permissions(s, dev) == []
    (dev / "i2c-1").chmod(0o666)
    assert doctor.check_device_permissions(s, dev) == []


# -- a missing bus once; nothing created; the running agent's parts left alone ---------------------

import select  # noqa: E402

from mqtt_helpers import CLOSED_HOURS, AgentProcess, Recorder  # noqa: E402


def test_a_missing_bus_is_said_once_not_blamed_on_every_sensor(tmp_path):
    s = validate({"hall": {"id": "zg-001", "city": "zigong", "branch": "ziliujing"},
                  "storage": {"dir": str(tmp_path / "s")},
                  "sensors": [{"id": "env", "driver": "sht3x", "bus": 9}, {"id": "co2", "driver": "scd4x", "bus": 9},
                              {"id": "t", "driver": "ds18b20", "device": "28-0316a2791eff",
                               "w1_root": str(tmp_path / "no-w1")}]})
    findings = doctor.check_sensors(s, doctor_hardware(s, tmp_path), dev_root=tmp_path)
    assert [f.what for f in findings] == ["I2C bus 9", "1-Wire"]
    assert "2 sensors on it not checked: env, co2" in findings[0].detail and "do_i2c" in findings[0].fix
    assert "w1-gpio" in findings[1].fix and not any(f.ok for f in findings)


def test_doctor_creates_nothing(tmp_path, broker):
    state = tmp_path / "var" / "lib" / "hall-agent"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n[mqtt]\nhost="127.0.0.1"\n'
                   f'port={broker.port}\n[storage]\ndir="{state}"\n'
                   '[[sensors]]\nid="voc"\ndriver="sgp30"\nbus=9\n')
    r = subprocess.run([sys.executable, "-m", "hall_agent", "doctor", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert "state folder" in r.stdout and "does not exist yet" in r.stdout, r.stdout
    assert not (tmp_path / "var").exists()  # no state folder made as a side effect
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker", "c.toml"]


def test_doctor_leaves_a_running_agents_parts_alone_and_asks_it(broker, tmp_path):
    master, slave = os.openpty()  # the printer's line: whatever doctor sends to it arrives here
    try:
        line = os.ttyname(slave)
        extra = CLOSED_HOURS + f'[[printers]]\nid = "printer.queue"\nport = "{line}"\ntimeout_s = 0.3\n' \
            '[[sensors]]\nid = "env.a"\ndriver = "sht3x"\ninterval_s = 1\n'
        from mqtt_helpers import write_config
        cfg = write_config(tmp_path / "c.toml", broker.port, tmp_path / "state", extra)

        def doctor_run():
            return subprocess.run([sys.executable, "-m", "hall_agent", "doctor", "-c", str(cfg)],
                                  capture_output=True, text=True, timeout=90)

        def sent() -> bytes:
            data = b""
            while select.select([master], [], [], 0.3)[0]:
                data += os.read(master, 1024)
            return data
        # without an agent, doctor asks the printer itself (DLE EOT): the test can see it
        doctor_run()
        assert b"\x10\x04" in sent()
        rec = Recorder(broker.port, ["halls/#"])
        agent = AgentProcess(cfg, "--simulate").start()  # the simulated agent holds the state folder's lock
        try:
            assert rec.wait_for(lambda r: any(p["state"] == "online" for p in r.payloads("/status")), 20)
            assert rec.wait_for(lambda r: r.on("/telemetry/env.a"), 20)
            r = doctor_run()
            assert "the agent runs on this machine" in r.stdout, r.stdout + r.stderr
            assert sent() == b""  # nothing on the printer's line under the running agent
            assert "ok       running agent: version" in r.stdout and "connected to the broker" in r.stdout
            assert "ok       sensor env.a: (asked the agent) temperature_c" in r.stdout
            assert "printer printer.queue: (asked the agent)" in r.stdout
            assert any(e.get("data", {}).get("command") == "status" for e in rec.payloads("/event"))
        finally:
            assert agent.terminate() == 0
            rec.close()
    finally:
        os.close(master)
        os.close(slave)
