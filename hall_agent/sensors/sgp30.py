"""Sensirion SGP30: TVOC and eCO2 over I2C, with the baseline kept across restarts.

Datasheet "SGP30" (Sensirion, v1.0), section 6: iaq_init 0x2003 (max 10 ms),
then measure_iaq 0x2008 once a second (max 12 ms) -> ``eCO2 CRC TVOC CRC``;
for the first 15 s after iaq_init it returns 400 ppm / 0 ppb (not readings:
``SensorWarmup``). get_iaq_baseline 0x2015 -> eCO2 baseline, TVOC baseline;
set_iaq_baseline 0x201E takes TVOC first, then eCO2 (6.3: "in reverse
order"). After power-up a baseline saved less than 7 days ago is restored
right after iaq_init; without one the sensor must run 12 hours before its
baseline is worth saving; then save it every hour.

Time: the loop measures at exactly 1 Hz whatever ``interval_s`` says
(``sample_s``). Running time (12 h, every hour) is on the monotonic clock;
a saved baseline's age needs the wall clock, so it is judged only once the
clock is synchronised (a Pi without an RTC boots at a wrong time), and a
baseline saved with an unsynchronised clock is never restored. A baseline
that cannot be saved (full or read-only disk) is logged once; the reading
goes on and the learnt baseline stays in the chip.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..clock import SystemClock
from .base import I2CDevice, Sensor, SensorError, SensorWarmup

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = 0x58
CMD_IAQ_INIT = 0x2003
CMD_MEASURE_IAQ = 0x2008
CMD_GET_BASELINE = 0x2015
CMD_SET_BASELINE = 0x201E
INIT_WAIT_S = 0.010
MEASURE_WAIT_S = 0.012
WARMUP_S = 15.0
BASELINE_MAX_AGE_S = 7 * 24 * 3600
FIRST_SAVE_AFTER_S = 12 * 3600
SAVE_EVERY_S = 3600
MAX_ECO2_PPM = 60000
MAX_TVOC_PPB = 60000


class SGP30(Sensor):
    model = "sgp30"
    sample_s = 1.0
    period_s = 1.0

    def __init__(self, bus: Any, address: int = DEFAULT_ADDRESS, baseline_file: str | os.PathLike | None = None,
                 clock=None, warmup_s: float = WARMUP_S):
        self.dev = I2CDevice(bus, address, self.model)
        self.baseline_file = Path(baseline_file) if baseline_file else None
        self.clock = clock or SystemClock()
        self.warmup_s = warmup_s
        self.started_at: float | None = None    # monotonic
        self.restored = False
        self.restore_pending = False
        self.last_save: float | None = None     # monotonic
        self._save_failed = False

    def start(self) -> None:
        self.dev.command(CMD_IAQ_INIT)
        time.sleep(INIT_WAIT_S)
        self.started_at = self.clock.monotonic()
        self.restored = False
        self.last_save = None
        self.restore_pending = self.baseline_file is not None and self.baseline_file.exists()
        self._try_restore()

    def _try_restore(self) -> None:
        if not self.restore_pending or not self.clock.synced():
            return          # a saved baseline's age cannot be judged yet
        self.restore_pending = False
        saved = self.load_baseline()
        if saved is not None:
            eco2, tvoc = saved
            self.dev.command(CMD_SET_BASELINE, [tvoc, eco2])
            time.sleep(INIT_WAIT_S)
            self.restored = True
            log.info("sgp30: restored baseline eCO2 %#06x TVOC %#06x", eco2, tvoc)

    def read(self) -> dict[str, float]:
        if self.started_at is None:
            self.start()
        self._try_restore()
        eco2, tvoc = self.dev.query(CMD_MEASURE_IAQ, 2, MEASURE_WAIT_S, "measurement")
        running = self.clock.monotonic() - self.started_at
        if running < self.warmup_s:
            raise SensorWarmup(f"sgp30: initialising ({running:.0f} of {self.warmup_s:.0f} s after iaq_init)")
        self._maybe_save_baseline()
        if eco2 > MAX_ECO2_PPM or tvoc > MAX_TVOC_PPB:
            raise SensorError(f"sgp30: eCO2 {eco2} ppm / TVOC {tvoc} ppb outside the output range "
                              f"(400-{MAX_ECO2_PPM} ppm, 0-{MAX_TVOC_PPB} ppb)")
        return {"tvoc_ppb": float(tvoc), "eco2_ppm": float(eco2)}

    def get_baseline(self) -> tuple[int, int]:
        eco2, tvoc = self.dev.query(CMD_GET_BASELINE, 2, INIT_WAIT_S, "baseline")
        return eco2, tvoc

    def _maybe_save_baseline(self) -> None:
        if self.baseline_file is None or self.started_at is None:
            return
        now = self.clock.monotonic()
        running = now - self.started_at
        if self.restore_pending:   # the clock never synchronised: after 12 h the learnt baseline wins
            if running < FIRST_SAVE_AFTER_S:
                return
            self.restore_pending = False
        if self.last_save is None:
            if running < (SAVE_EVERY_S if self.restored else FIRST_SAVE_AFTER_S):
                return
        elif now - self.last_save < SAVE_EVERY_S:
            return
        eco2, tvoc = self.get_baseline()
        self.last_save = now
        doc = {"eco2": eco2, "tvoc": tvoc, "saved_at": self.clock.time(), "synced": bool(self.clock.synced())}
        tmp = self.baseline_file.with_suffix(".tmp")
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.baseline_file)
            self._save_failed = False
        except OSError as e:   # disk full or read-only: the chip keeps its baseline; try again in an hour
            if not self._save_failed:
                log.error("sgp30: baseline cannot be saved to %s (%s); readings go on", self.baseline_file, e)
            self._save_failed = True

    def load_baseline(self) -> tuple[int, int] | None:
        if self.baseline_file is None or not self.baseline_file.exists():
            return None
        try:
            doc = json.loads(self.baseline_file.read_text())
            eco2, tvoc, saved_at = int(doc["eco2"]), int(doc["tvoc"]), float(doc["saved_at"])
            synced = bool(doc.get("synced", False))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("sgp30: unreadable baseline file %s ignored", self.baseline_file)
            return None
        age = self.clock.time() - saved_at
        if not synced:
            log.info("sgp30: baseline saved while the clock was not synchronised: its age is unknown, not restored")
            return None
        if not 0 <= age <= BASELINE_MAX_AGE_S or not (0 < eco2 <= 0xFFFF and 0 < tvoc <= 0xFFFF):
            log.info("sgp30: saved baseline not restored (%.1f days old; at most 7)", age / 86400)
            return None
        return eco2, tvoc
