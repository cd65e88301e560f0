"""The README's demo command, from a clean clone, in a fresh virtualenv (bounded run)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mqtt_helpers import Recorder

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)  # a fresh virtualenv is built: pip takes a minute or more on a loaded machine
def test_demo_from_a_clean_clone(broker, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    assert not (clone / ".venv").exists()
    rec = Recorder(broker.port, ["halls/#"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "HALL_AGENT_"))}
    env.update(HALL_AGENT_MQTT__PORT=str(broker.port), XDG_STATE_HOME=str(tmp_path / "state"))
    try:
        r = subprocess.run(["scripts/demo", "--seconds", "12"], cwd=clone, env=env, capture_output=True, text=True,
                           timeout=280)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert "mosquitto_sub -h 127.0.0.1" in r.stderr and "running for hall zg-001" in r.stderr
        base = "halls/zigong/ziliujing/zg-001"
        assert any(m.topic == f"{base}/status" for m in rec.messages)
        telemetry = {m.topic.rsplit("/", 1)[1] for m in rec.messages if "/telemetry/" in m.topic}
        assert {"env.counter", "env.waiting", "pm.hall", "hcho.hall"} <= telemetry  # the example hall's sensors
        states = {m.topic.rsplit("/", 1)[1] for m in rec.messages if "/state/" in m.topic}
        assert {"door.side", "panic.counter-1", "printer.queue", "kiosk.1"} <= states
        assert rec.payloads("/status")[-1]["state"] == "offline"  # stopped cleanly at the time limit
    finally:
        rec.close()
        shutil.rmtree(clone, ignore_errors=True)
