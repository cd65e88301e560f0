"""Deployment: the installer into a staging root, and the broker ACL with a real mosquitto."""

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_helpers import Broker, free_port

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "deploy" / "install.sh"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(600)  # two or three installer runs, each a pip install of 240 s at most
def test_installer_into_a_staging_root_is_idempotent_and_uninstall_keeps_config(tmp_path):
    root = tmp_path / "root"
    env = {**os.environ, "HALL_AGENT_PIP_ARGS": "--no-deps"}
    run = lambda *a: subprocess.run(["bash", str(INSTALL), "--root", str(root), *a], env=env,
                                    capture_output=True, text=True, timeout=240)
    first = run()
    assert first.returncode == 0, first.stderr
    etc = root / "etc" / "hall-agent"
    assert mode(etc) == 0o750 and mode(etc / "config.toml") == 0o640 and mode(etc / "mqtt-password") == 0o600
    unit = root / "etc" / "systemd" / "system" / "hall-agent.service"
    assert unit.read_text() == (ROOT / "systemd" / "hall-agent.service").read_text() and mode(unit) == 0o644
    exe = root / "opt" / "hall-agent" / "bin" / "hall-agent"
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.startswith("hall-agent ")
    (etc / "config.toml").write_text((etc / "config.toml").read_text().replace('id = "zg-001"', 'id = "zg-777"'))
    (etc / "mqtt-password").write_text("s3cret\n")
    second = run()
    assert second.returncode == 0, second.stderr
    assert "kept the existing" in second.stdout
    assert 'id = "zg-777"' in (etc / "config.toml").read_text()  # never overwritten
    assert (etc / "mqtt-password").read_text() == "s3cret\n" and mode(etc / "mqtt-password") == 0o600
    gone = run("--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists() and not (root / "opt" / "hall-agent").exists()
    assert (etc / "config.toml").exists() and (etc / "mqtt-password").exists()


def test_installer_refuses_a_live_install_without_root(tmp_path):
    cmd = ["bash", str(INSTALL)]
    if os.geteuid() == 0:  # as root (CI): try it as an unprivileged user
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "run as root" in r.stderr


@pytest.fixture
def acl_broker(tmp_path):
    if not shutil.which("mosquitto_passwd"):
        pytest.fail("mosquitto_passwd missing (package mosquitto)")
    acl, passwd = tmp_path / "halls.acl", tmp_path / "halls.passwd"
    acl.write_text("user central\ntopic read halls/#\ntopic write halls/+/+/+/cmd\n")
    secrets = {}
    for hall in ("zg-001", "zg-002"):
        out = subprocess.run([str(ROOT / "deploy" / "mosquitto" / "add-hall.sh"), "zigong", "ziliujing", hall,
                              str(acl), str(passwd)], capture_output=True, text=True, check=True).stdout
        secrets[hall] = out.split("password ")[1].split()[0]
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "central", "central-pw"], check=True)
    secrets["central"] = "central-pw"
    port = free_port()
    broker = Broker(tmp_path / "broker", extra_conf=(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"))
    broker.port = port
    broker.start()
    yield broker, secrets
    broker.stop()


class Client:
    def __init__(self, port, user, password):
        self.got, self.acks, self.subacks = [], {}, {}
        self.event = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}", protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = lambda c, u, m: (self.got.append((m.topic, m.payload)), self.event.set())
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.__setitem__(mid, rcs)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def publish(self, topic):
        info = self.c.publish(topic, b"x", qos=1)
        info.wait_for_publish(5)
        return self.acks[info.mid]

    def subscribe(self, topic):
        _, mid = self.c.subscribe(topic, qos=1)
        import time
        for _ in range(100):
            if mid in self.subacks:
                return self.subacks[mid][0]
            time.sleep(0.05)
        raise AssertionError("no SUBACK")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_acl_keeps_halls_apart(acl_broker):
    broker, secrets = acl_broker
    base1, base2 = "halls/zigong/ziliujing/zg-001", "halls/zigong/ziliujing/zg-002"
    hall1 = Client(broker.port, "zg-001", secrets["zg-001"])
    hall2 = Client(broker.port, "zg-002", secrets["zg-002"])
    central = Client(broker.port, "central", secrets["central"])
    try:
        assert central.subscribe("halls/#").is_failure is False
        assert hall1.subscribe(f"{base1}/cmd").is_failure is False
        hall1.subscribe(f"{base2}/cmd")  # mosquitto grants it, but delivers nothing the ACL denies
        assert central.publish(f"{base2}/cmd").is_failure is False
        assert hall1.publish(f"{base1}/status").is_failure is False
        assert hall1.publish(f"{base2}/status").is_failure is True  # publishing as another hall: refused
        assert hall1.publish("halls/zigong/other/x/alert/panic/p").is_failure is True
        assert central.publish(f"{base1}/cmd").is_failure is False
        assert central.publish(f"{base1}/status").is_failure is True  # the server only writes commands
        assert hall2.publish(f"{base2}/state/door").is_failure is False
        import time
        time.sleep(0.3)
        topics = [t for t, _ in central.got]
        assert f"{base1}/status" in topics and f"{base2}/state/door" in topics
        assert f"{base2}/status" not in topics
        hall1_topics = [t for t, _ in hall1.got]
        assert f"{base1}/cmd" in hall1_topics and f"{base2}/cmd" not in hall1_topics  # another hall's commands
    finally:
        for c in (hall1, hall2, central):
            c.close()


def test_storage_dir_read_only_under_the_unit_says_to_rerun_the_installer(tmp_path):
    """Issue 22.4: the unit makes everything but /var/lib/hall-agent read-only; a storage.dir
    elsewhere failed with a bare 'Read-only file system'. (CI is root: a read-only tmpfs.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only tmpfs")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        cfg = tmp_path / "c.toml"
        cfg.write_text('[hall]\nid="zg-001"\ncity="zigong"\nbranch="ziliujing"\n'
                       f'[storage]\ndir="{ro}/state"\n')
        import sys
        r = subprocess.run([sys.executable, "-m", "hall_agent", "run", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "INVOCATION_ID": "0123456789abcdef"})
        assert r.returncode != 0
        assert "read-only to hall-agent.service" in r.stderr and "deploy/install.sh" in r.stderr, r.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=True)
