"""Fleet tests: a broker with the deploy/ per-hall ACL and password file, the
central side as a paho client, and the agent under a supervisor that starts
it again when it exits asking for a restart (what systemd's Restart=always
does)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_helpers import CLOSED_HOURS, Broker, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
ACL = ROOT / "deploy" / "mosquitto" / "hall-agent.acl"
ADD_HALL = ROOT / "deploy" / "mosquitto" / "add-hall.sh"
EXIT_RESTART = 75


def central_acl() -> str:
    """The central server's block of deploy/'s ACL (everything before the generated halls)."""
    return ACL.read_text().split("# --- halls (generated) ---")[0]


class AclBroker:
    """mosquitto with allow_anonymous false, deploy/'s central ACL block and one
    block per hall written by deploy/mosquitto/add-hall.sh."""

    def __init__(self, workdir: Path, halls: list[tuple[str, str, str]], central_password: str = "central-pw"):
        if not shutil.which("mosquitto_passwd"):
            pytest.fail("mosquitto_passwd missing (package mosquitto)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.acl, self.passwd = workdir / "halls.acl", workdir / "halls.passwd"
        self.acl.write_text(central_acl())
        self.secrets: dict[str, str] = {}
        for city, branch, hall in halls:
            out = subprocess.run([str(ADD_HALL), city, branch, hall, str(self.acl), str(self.passwd)],
                                 capture_output=True, text=True, check=True).stdout
            self.secrets[hall] = out.split("password ")[1].split()[0]
        subprocess.run(["mosquitto_passwd", "-b", str(self.passwd), "central", central_password], check=True)
        self.secrets["central"] = central_password
        self.port = free_port()
        self.broker = Broker(workdir / "broker", extra_conf=(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\npassword_file {self.passwd}\n"
            f"acl_file {self.acl}\n"))
        self.broker.port = self.port

    def start(self) -> "AclBroker":
        self.broker.start()
        return self

    def stop(self) -> None:
        self.broker.stop()

    def reload(self) -> None:
        """mosquitto re-reads its password and ACL files on SIGHUP."""
        assert self.broker.proc is not None
        self.broker.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)


class Central:
    """The operator's side: reads halls/#, writes config/desired and cmd."""

    def __init__(self, port: int, password: str, user: str = "central", topics=("halls/#",)):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{time.monotonic_ns()}",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.acks: dict[int, object] = {}
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc)
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, qos=1) for t in topics]
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        assert self.subscribed.wait(10), "central did not subscribe"

    def _on_message(self, client, userdata, m) -> None:
        with self.cond:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
            self.cond.notify_all()

    def publish(self, topic: str, payload: bytes, retain: bool = False):
        info = self.c.publish(topic, payload, 1, retain)
        info.wait_for_publish(5)
        assert wait_until(lambda: info.mid in self.acks, 5)
        return self.acks[info.mid]

    def payloads(self, topic: str) -> list[dict]:
        with self.cond:
            return [json.loads(p) for t, p, _ in self.messages if t == topic and p]

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
            return True

    def reported(self, base: str) -> list[dict]:
        return self.payloads(f"{base}/config/reported")

    def send(self, base: str, command: str, args: dict | None = None) -> str:
        cid = f"t-{time.monotonic_ns()}"
        self.publish(f"{base}/cmd", json.dumps({"id": cid, "command": command, "args": args or {}}).encode())
        return cid

    def command(self, base: str, command: str, args: dict | None = None, timeout: float = 15.0) -> dict:
        cid = self.send(base, command, args)
        assert self.wait_for(lambda: any(r.get("id") == cid for r in self.payloads(f"{base}/cmd/reply")),
                             timeout), f"no reply to {command}"
        return next(r for r in self.payloads(f"{base}/cmd/reply") if r.get("id") == cid)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def hall_config(path: Path, port: int, state: Path, password_file: Path, extra: str = "",
                hall: str = "zg-001", city: str = "zigong", branch: str = "ziliujing",
                revert_after_s: float = 300) -> Path:
    path.write_text(f"""
[hall]
id = "{hall}"
city = "{city}"
branch = "{branch}"

[mqtt]
host = "127.0.0.1"
port = {port}
username = "{hall}"
password_file = "{password_file}"
drain_s = 2

[storage]
dir = "{state}"

[fleet]
revert_after_s = {revert_after_s}

{CLOSED_HOURS}
{extra}
""")
    return path


class Supervised:
    """``hall-agent run --simulate`` started again whenever it exits with the
    restart status (as systemd's Restart=always would)."""

    def __init__(self, config: Path, log: Path, env: dict | None = None, simulate: bool = True):
        self.config = config
        self.simulate = simulate
        self.log = log
        self.env = {**os.environ, "HALL_AGENT_SIM_DAY": "0", **(env or {})}
        self.exits: list[int] = []
        self.starts = 0
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Supervised":
        self._thread.start()
        return self

    def _run(self) -> None:
        with open(self.log, "ab") as out:
            while not self._stop.is_set():
                self.starts += 1
                self.proc = subprocess.Popen([sys.executable, "-m", "hall_agent", "run", "-c", str(self.config),
                                              *(["--simulate"] if self.simulate else [])],
                                             env=self.env, stdout=out, stderr=subprocess.STDOUT)
                code = self.proc.wait()
                self.exits.append(code)
                if code != EXIT_RESTART:
                    return

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 20
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            time.sleep(0.05)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class SimHall:
    """A simulated hall for rollouts: the agent's own fleet code (Member: the
    validation, the file replace, the self-revert) on a paho client of its own,
    logged in as the hall's broker user. A restart it asks for is done in
    process: the client goes, and a new Member and client start from the file
    on disk (what systemd and a new agent process would do)."""

    def __init__(self, workdir: Path, port: int, secret: str, city: str, branch: str, hall: str,
                 revert_after_s: float = 300):
        workdir.mkdir(parents=True, exist_ok=True)
        self.base = f"halls/{city}/{branch}/{hall}"
        self.hall = hall
        pw = workdir / "mqtt-password"
        pw.write_text(secret + "\n")
        self.config = hall_config(workdir / "config.toml", port, workdir / "state", pw, hall=hall, city=city,
                                  branch=branch, revert_after_s=revert_after_s)
        (workdir / "state").mkdir(exist_ok=True)
        self.state = workdir / "state"
        self.restarts = 0
        self.client = None
        self.member = None
        self._lock = threading.Lock()
        self.boot()

    def boot(self) -> None:
        from hall_agent.config import load
        from hall_agent.fleet import Member
        settings = load(self.config)
        now = lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        self.member = Member(settings, self.config, self.state, self._publish, self._restart, now)
        noop = lambda old, new: None
        self.member.appliers.update({"hours": noop, "checks": noop, "rules": noop, "profile": noop})
        self.member.boot()
        m = settings.mqtt
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hall-agent-{self.hall}", protocol=mqtt.MQTTv5)
        c.username_pw_set(m.username, m.password_file.read_text().strip())
        c.will_set(f"{self.base}/status", json.dumps({"state": "offline", "reason": "connection-lost"}), 1, True)
        c.reconnect_delay_set(0.1, 0.5)
        c.on_connect = self._on_connect
        c.on_message = lambda cl, u, msg: threading.Thread(target=self.member.on_desired,
                                                           args=(bytes(msg.payload),), daemon=True).start()
        self.client = c
        c.connect_async(m.host, m.effective_port, 30)
        c.loop_start()
        self.member.start()

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        if rc.is_failure:
            return
        client.subscribe(f"{self.base}/config/desired", qos=1)
        client.publish(f"{self.base}/status", json.dumps({"state": "online", "version": "sim"}), 1, True)
        self.member.connected()

    def _publish(self, payload: bytes, wait_s: float) -> bool:
        c = self.client
        if c is None or not c.is_connected():
            return False
        info = c.publish(f"{self.base}/config/reported", payload, 1, True)
        if wait_s <= 0:
            return True
        try:
            info.wait_for_publish(wait_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def _restart(self, reason: str) -> None:
        threading.Thread(target=self._do_restart, daemon=True).start()

    def _do_restart(self) -> None:
        with self._lock:
            self.close()
            self.restarts += 1
            self.boot()

    def close(self) -> None:
        if self.member is not None:
            self.member.stop()
        if self.client is not None:
            if self.client.is_connected():
                self.client.publish(f"{self.base}/status", json.dumps({"state": "offline", "reason": "shutdown"}),
                                    1, True).wait_for_publish(2)
            self.client.disconnect()
            self.client.loop_stop()
