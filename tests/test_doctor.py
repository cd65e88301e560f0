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
    (sensor,) = [f for f in doctor.check_sensors(s, doctor_hardware(s, tmp_path)) if f.what == "sensor env"]
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
    assert r.returncode == 1 and "PROBLEM  sensor env" in r.stdout and "ok       broker" in r.stdout


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
