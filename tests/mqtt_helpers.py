"""Test helpers: a real mosquitto on a free loopback port, a recording
subscriber, and the agent as a child process."""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Broker:
    """mosquitto on 127.0.0.1:<free port>, persistent across restarts unless told otherwise."""

    def __init__(self, workdir: Path, extra_conf: str = "", persistence: bool = True, port: int | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.persistence = persistence  # False: a restart forgets every retained message and session
        self.proc: subprocess.Popen | None = None

    def write_conf(self) -> Path:
        conf = self.dir / "mosquitto.conf"
        listener = self.extra_conf if "listener" in self.extra_conf else f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{self.extra_conf}"
        conf.write_text(
            f"user {getpass.getuser()}\n"
            f"persistence {'true' if self.persistence else 'false'}\npersistence_location {self.dir}/\n"
            f"log_dest file {self.dir}/mosquitto.log\n"
            f"{listener}\n")
        return conf

    def start(self) -> "Broker":
        conf = self.write_conf()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        if not wait_until(self._accepts, 10):
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log()}")
        return self

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''} {self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text() if path.exists() else ""


class Recorder:
    """A paho subscriber that records what it receives. With ``session`` it keeps
    a persistent session, so messages published while it is away are queued."""

    def __init__(self, port: int, topics: list[str], session: str | None = None, protocol: int = 5):
        self.messages: list[mqtt.MQTTMessage] = []
        self.cond = threading.Condition()
        self.topics = topics
        v5 = protocol == 5
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=session or "",
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                                  clean_session=None if v5 else session is None)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        props = None
        if v5 and session:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.connect("127.0.0.1", port, 30, clean_start=(session is None) if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                            properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber did not subscribe"

    def _on_connect(self, client, userdata, flags, rc, props):
        for t in self.topics:
            client.subscribe(t, qos=1)

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def on(self, suffix: str) -> list[mqtt.MQTTMessage]:
        with self.cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def payloads(self, suffix: str) -> list[dict]:
        return [json.loads(m.payload) for m in self.on(suffix) if m.payload]

    def wait_for(self, predicate: Callable[["Recorder"], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
            properties=None, protocol: int = 5) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        client.publish(topic, payload, qos, retain, properties=properties).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


#: no scheduled check fires during a test, whatever the time of day it runs at
CLOSED_HOURS = "[hours]\n" + "".join(f'{d} = "closed"\n' for d in (
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))


def write_config(path: Path, port: int, state: Path, extra: str = "", hall: str = "zg-001") -> Path:
    path.write_text(f"""
[hall]
id = "{hall}"
city = "zigong"
branch = "ziliujing"

[mqtt]
host = "127.0.0.1"
port = {port}
drain_s = 3

[storage]
dir = "{state}"
{extra}
""")
    return path


class AgentProcess:
    """``python -m hall_agent run`` as a child process."""

    def __init__(self, config: Path, *args: str, env: dict | None = None):
        self.config = config
        self.args = args
        # the simulated day would move values the tests set: off unless a test asks for it
        self.env = {**os.environ, "HALL_AGENT_SIM_DAY": "0", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "AgentProcess":
        self.proc = subprocess.Popen([sys.executable, "-m", "hall_agent", "run", "-c", str(self.config), *self.args],
                                     env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        if self.proc is None or self.proc.stdout is None:
            return ""
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read().decode(errors="replace")
