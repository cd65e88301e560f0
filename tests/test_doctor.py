"""hall-agent doctor: each problem found, with its fix; exit 1 on any."""

import subprocess
import sys

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
