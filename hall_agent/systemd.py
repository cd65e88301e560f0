"""sd_notify without libsystemd: datagrams to ``$NOTIFY_SOCKET``, and a
watchdog that is fed only while the agent's loops make progress."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)


def notify(message: str, socket_path: str | None = None) -> bool:
    """Send ``READY=1``, ``WATCHDOG=1``, ``STATUS=…``, ``STOPPING=1`` … to systemd.
    Returns False when not run by systemd (no ``NOTIFY_SOCKET``)."""
    path = socket_path or os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
        return True
    except OSError as e:
        log.debug("sd_notify %r failed: %s", message, e)
        return False


class ServiceStatus:
    """The one line ``systemctl status`` shows: what the agent is doing (``running for
    hall …``) plus the current notes (a reload, a stalled loop). A note is added or
    cleared on its own, so that it never hides that the agent runs, nor outlives its cause."""

    def __init__(self, send: Callable[[str], bool] = notify):
        self.send = send
        self.state = ""
        self.notes: dict[str, str] = {}
        self._lock = threading.Lock()

    def text(self) -> str:
        return "; ".join([self.state, *self.notes.values()])

    def message(self) -> str:
        return f"STATUS={self.text()}"

    def set_state(self, state: str, announce: bool = True) -> None:
        with self._lock:
            self.state = state
            if announce:
                self.send(self.message())

    def note(self, key: str, text: str | None) -> None:
        """Set (or, with None, clear) one note and tell systemd."""
        with self._lock:
            if text is None:
                if self.notes.pop(key, None) is None:
                    return
            else:
                self.notes[key] = text
            self.send(self.message())


@dataclass
class Loop:
    name: str
    heartbeat: Callable[[], float]   # time.monotonic() of the loop's last turn
    max_age_s: float


class Watchdog:
    """Sends ``WATCHDOG=1`` every ``interval_s`` while every loop's heartbeat is
    younger than its ``max_age_s``; a stalled loop stops the feeding, and
    systemd restarts the agent after ``WatchdogSec``."""

    def __init__(self, loops: list[Loop], interval_s: float, send: Callable[[str], bool] = notify,
                 clock=time.monotonic, status: ServiceStatus | None = None):
        self.loops = loops
        self.status = status if status is not None else ServiceStatus(send)
        self.interval_s = interval_s
        self.send = send
        self.clock = clock
        self.stalled: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    @classmethod
    def from_environment(cls, loops: list[Loop], status: ServiceStatus | None = None) -> "Watchdog | None":
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return cls(loops, int(usec) / 1e6 / 2, status=status)

    def check(self) -> list[str]:
        now = self.clock()
        return [f"{loop.name} ({now - loop.heartbeat():.0f} s)" for loop in self.loops
                if now - loop.heartbeat() > loop.max_age_s]

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._run_once(self.check())

    def _run_once(self, stalled: list[str]) -> None:
        if not stalled:
            self.send("WATCHDOG=1")
            if self.stalled:
                log.warning("loops moving again: feeding the watchdog")
                self.status.note("watchdog", None)
        elif [s.split(" (")[0] for s in stalled] != [s.split(" (")[0] for s in self.stalled]:
            log.error("not feeding the watchdog: stalled loop(s) %s", ", ".join(stalled))
            self.status.note("watchdog", f"stalled: {', '.join(stalled)}")
        self.stalled = stalled

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 1)
