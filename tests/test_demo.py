"""The README's demo command, from a clean clone, in a fresh virtualenv (bounded run), on a machine
whose usual MQTT port is taken by a broker the demo did not start."""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mqtt_helpers import Recorder

ROOT = Path(__file__).resolve().parent.parent


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.timeout(300)  # a fresh virtualenv is built: pip takes a minute or more on a loaded machine
def test_demo_from_a_clean_clone_with_the_usual_port_taken(broker, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    assert not (clone / ".venv").exists()
    # `broker` stands for whatever holds 1883 on a user's machine: the demo must not publish onto it
    foreign = Recorder(broker.port, ["#"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "HALL_AGENT_"))}
    env.update(HALL_AGENT_DEMO_PORT=str(broker.port), XDG_STATE_HOME=str(tmp_path / "state"))
    proc = subprocess.Popen(["scripts/demo", "--seconds", "45"], cwd=clone, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    err: list[str] = []
    hint = threading.Event()

    def read():
        for line in proc.stdout:
            err.append(line)
            if line.startswith("Stop with Ctrl-C"):
                hint.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rec = None
    try:
        assert hint.wait(240), "".join(err)[-3000:]
        text = "".join(err)
        assert f"127.0.0.1:{broker.port} is already in use by another program" in text
        ports = set(re.findall(r"-p (\d+)", text)) | set(re.findall(r"HALL_AGENT_MQTT__PORT=(\d+)", text))
        assert len(ports) == 1, ports  # every hint carries the same port...
        port = int(ports.pop())
        assert port != broker.port  # ...the demo's own broker's
        assert f"HALL_AGENT_MQTT__PORT={port} .venv/bin/hall-agent watch" in text
        assert '"command":"reset","args":{"source":"panic.counter-1"}' in text  # how to reset the latched panic
        rec = Recorder(port, ["halls/#"])
        base = "halls/zigong/ziliujing/zg-001"
        assert rec.wait_for(lambda r: any(m.topic == f"{base}/status" for m in r.messages), 20)
        # the CO2 hint, as printed, raises an alert within the demo's time
        co2 = next(line for line in err if "sim/sensor/co2.hall" in line).strip()
        subprocess.run(["sh", "-c", co2], check=True, timeout=10)
        assert rec.wait_for(lambda r: any("/alert/co2-high-demo/co2.hall" in m.topic and m.payload
                                          for m in r.messages), 35), [m.topic for m in rec.messages][-20:]
        proc.wait(timeout=60)
        reader.join(10)
        assert proc.returncode == 0, "".join(err)[-3000:]
        text = "".join(err)
        assert "running for hall zg-001" in text
        telemetry = {m.topic.rsplit("/", 1)[1] for m in rec.messages if "/telemetry/" in m.topic}
        assert {"env.counter", "env.waiting", "pm.hall", "hcho.hall"} <= telemetry  # the example hall's sensors
        states = {m.topic.rsplit("/", 1)[1] for m in rec.messages if "/state/" in m.topic}
        assert {"door.side", "panic.counter-1", "printer.queue", "kiosk.1"} <= states
        assert rec.payloads("/status")[-1]["state"] == "offline"  # stopped cleanly at the time limit
        # it stopped the broker it started, and left nothing running
        assert f"stopped the demo's mosquitto on 127.0.0.1:{port}" in text
        assert not listening(port)
        assert not (tmp_path / "state" / "hall-agent" / "demo" / "mosquitto.pid").exists()
        # nothing of the demo reached the broker it did not start
        assert not [m.topic for m in foreign.messages if m.topic.startswith("halls/")]
        # no warning of ours (setuptools' editable-install notice included)
        for bad in ("BuildBackendWarning", "Please be careful", "Traceback", "ERROR"):
            assert bad not in text, text[-3000:]
        # the second run of the set-up (the README's other command does it too) is silent
        again = subprocess.run(["scripts/setup-env"], cwd=clone, env=env, capture_output=True, text=True,
                               timeout=120)
        assert again.returncode == 0 and again.stdout == "" and again.stderr == "", again.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # a demo cut short (a failed assertion, a timeout) leaves its own broker: stop it too
        pidfile = tmp_path / "state" / "hall-agent" / "demo" / "mosquitto.pid"
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass
        if rec is not None:
            rec.close()
        foreign.close()
        shutil.rmtree(clone, ignore_errors=True)
