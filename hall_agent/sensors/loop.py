"""The sensor loop: every sensor read on its own rhythm, in its own thread,
each read bounded by a timeout, failures counted into a fault and a recovery.

Nothing here touches MQTT or disk: results go to the callbacks given.
A read that hangs (a stuck bus, a blocked tty) is abandoned after
``timeout_s``: its worker thread is left to finish, and no new read of that
sensor starts until it has, each missed turn counting as a failure.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable

from .base import Sensor, SensorError, SensorTimeout, SensorWarmup

log = logging.getLogger(__name__)


@dataclass
class SensorSpec:
    id: str
    model: str
    interval_s: float
    fault_after: int
    factory: Callable[[], Sensor]
    sample_s: float | None = None
    timeout_s: float | None = None

    @property
    def period(self) -> float:
        """How often the part is read: its own sampling rate where it has one (SGP30:
        exactly 1 Hz, whatever interval_s says), else interval_s."""
        return self.sample_s if self.sample_s else self.interval_s

    @property
    def read_timeout(self) -> float:
        """``timeout_s`` where given (the driver's documented worst case, from hardware.py),
        else between 2 and 15 s by the period."""
        return self.timeout_s or max(2.0, min(self.period, 15.0))


class _DaemonReads:
    """Each read on a daemon thread of its own: a read that never returns (a hung bus or
    tty) cannot keep the process alive after the stop, as an executor's worker would
    (the interpreter joins those at exit)."""

    def __init__(self, name: str):
        self.name = name

    def submit(self, fn: Callable[[], dict[str, float]]) -> Future:
        future: Future = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)

        threading.Thread(target=run, name=self.name, daemon=True).start()
        return future

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        pass  # a read still running is abandoned with its daemon thread


class SensorRunner:
    """One sensor: its thread, its driver instance, its failure count."""

    def __init__(self, spec: SensorSpec, on_reading, on_fault, on_recover, clock=time.monotonic):
        self.spec = spec
        self.on_reading, self.on_fault, self.on_recover = on_reading, on_fault, on_recover
        self.clock = clock
        self.sensor: Sensor | None = None
        self.failures = 0
        self.faulted = False
        self.last_error: SensorError | None = None
        self.last_values: dict[str, float] | None = None
        self.last_ok_at: float | None = None  # monotonic time of the last good read
        self.reads = 0
        self.warming: str | None = None   # why the part gives no reading yet (warm-up, asleep)
        self._pending: Future | None = None
        self._executor = _DaemonReads(f"read-{spec.id}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sensor-{spec.id}", daemon=True)
        self.heartbeat = clock()

    @property
    def state(self) -> str:
        return "fault" if self.faulted else "ok"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.spec.read_timeout + 1)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.sensor is not None and (self._pending is None or self._pending.done()):
            try:
                self.sensor.close()
            except Exception:
                pass

    def _read(self) -> dict[str, float]:
        if self.sensor is None:
            self.sensor = self.spec.factory()
            self.sensor.start()
        return self.sensor.read()

    def read_once(self) -> dict[str, float] | None:
        """One turn: read (bounded), then count the result. Returns the values or None."""
        spec = self.spec
        if self._pending is not None and not self._pending.done():
            self._failed(SensorTimeout(f"{spec.model}: previous read still running after "
                                       f"{spec.read_timeout:g} s (bus or port hung)"))
            return None
        self._pending = self._executor.submit(self._read)
        try:
            values = self._pending.result(timeout=spec.read_timeout)
        except FutureTimeout:
            self._failed(SensorTimeout(f"{spec.model}: read took longer than {spec.read_timeout:g} s"))
            return None
        except SensorWarmup as e:  # documented warm-up or asleep: no reading, no failure
            if self.warming != e.reason:
                log.info("sensor %s: %s", spec.id, e.reason)
            self.warming = e.reason
            return None
        except SensorError as e:
            self._failed(e)
            return None
        except Exception as e:  # a driver bug is a fault of this sensor, not of the agent
            log.exception("sensor %s: driver error", spec.id)
            self._failed(SensorError(f"{spec.model}: driver error {type(e).__name__}: {e}"))
            return None
        self.reads += 1
        self.warming = None
        self.last_values = values
        self.last_ok_at = self.clock()
        self.failures = 0
        self.last_error = None
        if self.faulted:
            self.faulted = False
            self.on_recover(spec.id)
        return values

    def _failed(self, error: SensorError) -> None:
        self.failures += 1
        self.last_error = error
        log.debug("sensor %s: %s (%d in a row)", self.spec.id, error.reason, self.failures)
        if self.failures == self.spec.fault_after and not self.faulted:
            self.faulted = True
            log.warning("sensor %s fault after %d failed reads: %s", self.spec.id, self.failures, error.reason)
            self.on_fault(self.spec.id, error, self.failures)
            self._reset_driver()

    def _reset_driver(self) -> None:
        """Start the part afresh on the next turn (it may have lost power or its mode)."""
        if self.sensor is not None and (self._pending is None or self._pending.done()):
            try:
                self.sensor.close()
            except Exception:
                pass
            self.sensor = None

    def _run(self) -> None:
        spec = self.spec
        next_read = self.clock()
        next_publish = self.clock()
        latest: dict[str, float] | None = None
        anchored = False
        while not self._stop.is_set():
            delay = next_read - self.clock()
            if delay > 0 and self._stop.wait(delay):
                return
            self.heartbeat = self.clock()
            next_read += spec.period
            if next_read < self.clock():  # a slow read: do not try to catch up
                next_read = self.clock() + spec.period
            values = self.read_once()
            if values is not None:
                latest = values
                if not anchored:  # the rhythm starts at the first reading: a part's start can take
                    anchored = True  # seconds (an SCD4x's first sample comes 5.5 s after its start)
                    next_read = self.clock() + spec.period
                    next_publish = self.clock()
            if latest is not None and self.clock() >= next_publish - 1e-3:
                self.on_reading(spec.id, spec.model, latest)
                latest = None
                step = max(spec.interval_s, spec.period)
                next_publish += step  # on the reads' grid: a slow read does not skip the next publish
                if next_publish <= self.clock():
                    next_publish = self.clock() + step


class SensorLoop:
    def __init__(self, specs: list[SensorSpec], on_reading: Callable[[str, str, dict], None],
                 on_fault: Callable[[str, SensorError, int], None], on_recover: Callable[[str], None]):
        self.runners = {s.id: SensorRunner(s, on_reading, on_fault, on_recover) for s in specs}

    def start(self) -> None:
        for r in self.runners.values():
            r.start()

    def stop(self) -> None:
        for r in self.runners.values():
            r._stop.set()
        for r in self.runners.values():
            r.stop()

    def states(self) -> dict[str, str]:
        return {sid: r.state for sid, r in self.runners.items()}
