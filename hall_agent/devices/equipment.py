"""Networked equipment: TCP connect and HTTP(S) GET probes, off the main path."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    latency_ms: float | None
    detail: str


def probe(url: str, timeout_s: float = 3.0) -> ProbeResult:
    """``tcp://host:port``: a TCP connection opens. ``http(s)://…``: a GET
    answers with a status below 400. Latency is to the connection or the answer."""
    parts = urlsplit(url)
    start = time.perf_counter()
    ms = lambda: round((time.perf_counter() - start) * 1000.0, 1)
    if parts.scheme == "tcp":
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
                return ProbeResult(True, ms(), "connected")
        except socket.timeout:
            return ProbeResult(False, None, f"no answer within {timeout_s:g} s")
        except OSError as e:
            return ProbeResult(False, None, e.strerror or str(e))
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "hall-agent-probe"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return ProbeResult(response.status < 400, ms(), f"HTTP {response.status}")
    except urllib.error.HTTPError as e:
        return ProbeResult(False, ms(), f"HTTP {e.code}")
    except (socket.timeout, TimeoutError):
        return ProbeResult(False, None, f"no answer within {timeout_s:g} s")
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return ProbeResult(False, None, f"no answer within {timeout_s:g} s")
        return ProbeResult(False, None, getattr(reason, "strerror", None) or str(reason))
    except (OSError, ssl.SSLError, ValueError) as e:
        return ProbeResult(False, None, str(e))


class EquipmentMonitor:
    """Probes every equipment item on its own thread, every ``interval_s``;
    reports a change of reachability (latency is recorded, not a change)."""

    def __init__(self, items, on_result: Callable[[str, ProbeResult, bool], None],
                 probe_fn: Callable[[str, float], ProbeResult] = probe, interval_s: float = 60.0,
                 timeout_s: float = 3.0):
        self.items = [e for e in items if e.probe]
        self.on_result = on_result
        self.probe_fn = probe_fn
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.results: dict[str, ProbeResult] = {}
        self._held: dict[str, float] = {}  # equipment id -> monotonic time its settling ends
        self._switched: dict[str, int] = {}  # equipment id -> how often it was switched on (hold)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(e,), name=f"probe-{e.id}", daemon=True)
                         for e in self.items]
        self.heartbeat = time.monotonic()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def hold(self, equipment_id: str, settle_s: float) -> None:
        """Just switched on: forget the previous result and probe it no sooner than
        ``settle_s`` (monotonic) from now; until then it is ``reachable: null``."""
        self._switched[equipment_id] = self._switched.get(equipment_id, 0) + 1
        self.results.pop(equipment_id, None)
        self._held[equipment_id] = time.monotonic() + settle_s

    def probe_now(self, equipment_id: str) -> ProbeResult | None:
        for e in self.items:
            if e.id == equipment_id:
                return self._probe(e, force=True)
        return None

    def _probe(self, e, force: bool = False) -> ProbeResult | None:
        held = self._held.get(e.id)
        if held is not None:
            if not force and time.monotonic() < held:
                return None  # still settling
            self._held.pop(e.id, None)
        switched = self._switched.get(e.id, 0)
        result = self.probe_fn(e.probe, self.timeout_s)
        if self._switched.get(e.id, 0) != switched:
            return None  # switched on while this probe ran: its answer is from before (off), not a result
        previous = self.results.get(e.id)
        self.results[e.id] = result
        self.on_result(e.id, result, previous is None or previous.reachable != result.reachable)
        return result

    def _run(self, e) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                self._probe(e)
            except Exception:
                log.exception("equipment %s: probe failed", e.id)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 1)
