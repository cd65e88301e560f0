"""Sensirion SGP30: TVOC and eCO2 over I2C, with the baseline kept across restarts.

Datasheet "SGP30" (Sensirion, v1.0), section 6: iaq_init 0x2003 (max 10 ms),
then measure_iaq 0x2008 once a second (max 12 ms) -> ``eCO2 CRC TVOC CRC``;
for the first 15 s it returns 400 ppm / 0 ppb. get_iaq_baseline 0x2015 ->
eCO2 baseline, TVOC baseline; set_iaq_baseline 0x201E takes TVOC first,
then eCO2 (6.3: "in reverse order"). After power-up a baseline saved less
than 7 days ago is restored right after iaq_init; without one the sensor
must run 12 hours before its baseline is worth saving; then save it every hour.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .base import I2CDevice, Sensor

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = 0x58
CMD_IAQ_INIT = 0x2003
CMD_MEASURE_IAQ = 0x2008
CMD_GET_BASELINE = 0x2015
CMD_SET_BASELINE = 0x201E
INIT_WAIT_S = 0.010
MEASURE_WAIT_S = 0.012
BASELINE_MAX_AGE_S = 7 * 24 * 3600
FIRST_SAVE_AFTER_S = 12 * 3600
SAVE_EVERY_S = 3600


class SGP30(Sensor):
    model = "sgp30"
    sample_s = 1.0

    def __init__(self, bus: Any, address: int = DEFAULT_ADDRESS, baseline_file: str | os.PathLike | None = None,
                 clock=time.time):
        self.dev = I2CDevice(bus, address, self.model)
        self.baseline_file = Path(baseline_file) if baseline_file else None
        self.clock = clock
        self.started_at: float | None = None
        self.restored = False
        self.last_save: float | None = None

    def start(self) -> None:
        self.dev.command(CMD_IAQ_INIT)
        time.sleep(INIT_WAIT_S)
        self.started_at = self.clock()
        self.restored = False
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
        eco2, tvoc = self.dev.query(CMD_MEASURE_IAQ, 2, MEASURE_WAIT_S, "measurement")
        self._maybe_save_baseline()
        return {"tvoc_ppb": float(tvoc), "eco2_ppm": float(eco2)}

    def get_baseline(self) -> tuple[int, int]:
        eco2, tvoc = self.dev.query(CMD_GET_BASELINE, 2, INIT_WAIT_S, "baseline")
        return eco2, tvoc

    def _maybe_save_baseline(self) -> None:
        if self.baseline_file is None or self.started_at is None:
            return
        now = self.clock()
        due_first = self.restored or now - self.started_at >= FIRST_SAVE_AFTER_S
        if not due_first or (self.last_save is not None and now - self.last_save < SAVE_EVERY_S):
            return
        if self.last_save is None and self.restored and now - self.started_at < SAVE_EVERY_S:
            return
        eco2, tvoc = self.get_baseline()
        tmp = self.baseline_file.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"eco2": eco2, "tvoc": tvoc, "saved_at": now}))
        os.replace(tmp, self.baseline_file)
        self.last_save = now

    def load_baseline(self) -> tuple[int, int] | None:
        if self.baseline_file is None or not self.baseline_file.exists():
            return None
        try:
            doc = json.loads(self.baseline_file.read_text())
            eco2, tvoc, saved_at = int(doc["eco2"]), int(doc["tvoc"]), float(doc["saved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("sgp30: unreadable baseline file %s ignored", self.baseline_file)
            return None
        if self.clock() - saved_at > BASELINE_MAX_AGE_S or not (0 < eco2 <= 0xFFFF and 0 < tvoc <= 0xFFFF):
            return None
        return eco2, tvoc
